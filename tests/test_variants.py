"""Several agents or models on one card (issue 7), on real throwaway repositories with command
agents: "Start on several" makes one card, branch, worktree and run per choice; the comparison
shows each one's state, result, diff size, checks, tokens, cost and time; landing the chosen one
removes the others (nothing left running, no worktree left); garbage and refusals answer 4xx."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from django.test import Client

from agents import runner
from board.models import Agent, AuditEntry, Card, Column, Run, RunState
from tests.conftest import git

pytestmark = pytest.mark.django_db


@pytest.fixture
def client():
    return Client(HTTP_HOST="127.0.0.1", raise_request_exception=True)


@pytest.fixture
def agents(db):
    """Three command agents that do different amounts of work, each in files of its own."""

    def make(name, command):
        return Agent.objects.create(name=name, kind=Agent.Kind.COMMAND, command=command)

    return [
        make("one-file", "echo one > one.txt"),
        make("two-files", "printf 'a\\nb\\nc\\n' > two-a.txt; echo b > two-b.txt"),
        make("three-files", "echo x > t1.txt; echo y > t2.txt; printf 'p\\nq\\n' > t3.txt"),
    ]


@pytest.fixture
def card(project, agents):
    return Card.create(project, "Add a greeting", "Write a greeting file", agents[0])


def start_on(client, card, agents, models=""):
    return client.post(f"/cards/{card.pk}/start-variants", {"agents": [a.pk for a in agents], "models": models})


def run_all(group):
    for member in group:
        member.refresh_from_db()
        runner.execute(member.current_run_id)


def group_of(card) -> list[Card]:
    card.refresh_from_db()
    return card.variant_group()


def row(html: str, card_id: int) -> str:
    found = re.search(rf'<tr id="variant-{card_id}".*?</tr>', html, re.S)
    assert found, f"the comparison has a row for card #{card_id}"
    return found.group(0)


def test_starting_on_three_agents_makes_three_cards_with_three_branches_worktrees_and_runs(client, card, agents):
    response = start_on(client, card, agents)
    assert response.status_code == 302 and response["Location"] == f"/cards/{card.pk}/compare"

    group = group_of(card)
    assert [c.agent.name for c in group] == ["one-file", "two-files", "three-files"]
    assert group[0].pk == card.pk and group[0].title == "Add a greeting"
    assert [c.title for c in group[1:]] == ["Add a greeting · two-files", "Add a greeting · three-files"]
    assert all(c.prompt == "Write a greeting file" and c.variant_of_id == card.pk for c in group)
    assert all(c.column == Column.IN_PROGRESS and c.current_run.state == RunState.QUEUED for c in group)
    assert Run.objects.filter(card__in=group).count() == 3

    run_all(group)
    group = group_of(card)
    assert all(c.column == Column.REVIEW and c.current_run.state == RunState.SUCCEEDED for c in group)
    branches = {c.branch for c in group}
    worktrees = {c.worktree_path for c in group}
    assert len(branches) == 3 and len(worktrees) == 3
    assert all(os.path.isdir(path) for path in worktrees)
    repo = card.project.repo_path
    for member, files in zip(group, (["one.txt"], ["two-a.txt", "two-b.txt"], ["t1.txt", "t2.txt", "t3.txt"])):
        listed = git(repo, "diff", "--name-only", f"main...{member.branch}").split()
        assert listed == files, f"#{member.pk} holds only its own agent's work"


def test_the_comparison_lists_each_variant_with_state_result_diff_size_checks_tokens_cost_and_time(
        client, card, agents):
    failing = Agent.objects.create(name="breaks", kind=Agent.Kind.COMMAND, command="echo half > half.txt; exit 3")
    start_on(client, card, [*agents, failing])
    group = group_of(card)
    run_all(group)
    Run.objects.filter(pk=group[1].current_run_id).update(tokens=12345, cost=0.0421)

    html = client.get(f"/cards/{card.pk}/compare").content.decode()
    first, second, third, broken = (row(html, c.pk) for c in group)
    assert "one-file" in first and "Succeeded" in first.title() and "1 file <span class=\"added\">+1</span>" in first
    assert "2 files <span class=\"added\">+4</span> <span class=\"deleted\">−0</span>" in second
    assert "3 files <span class=\"added\">+4</span>" in third
    assert '<span class="ok">passed</span>' in first and "exit status" in first
    assert "12345" in second and "$0.0421" in second
    assert re.search(r'class="variant-time">\d+ s<', first), "the time the run took"
    assert "failed" in broken and '<span class="run-error">failed</span>' in broken and "exit" in broken
    assert "1 file" in broken, "what a failed run left is committed and counted too"
    assert "Land this one" in first and "Land this one" not in broken, "only a card in Review can be chosen"


def test_the_comparison_shows_the_builtin_agents_check_result_per_model(client, card, agents, project):
    builtin = Agent.objects.create(name="builtin", kind=Agent.Kind.BUILTIN, model="openai/own-model")
    project.api_base, project.api_key_env = "http://127.0.0.1:9/v1", "SOME_KEY"
    project.model = "openai/project-model"
    project.save()
    response = start_on(client, card, [builtin], models="openai/model-a\nopenai/model-b\nopenai/model-a")
    assert response.status_code == 302
    group = group_of(card)
    assert [(c.agent.name, c.model) for c in group] == [("builtin", "openai/model-a"), ("builtin", "openai/model-b")]
    assert all((c.api_base, c.api_key_env) == ("http://127.0.0.1:9/v1", "SOME_KEY") for c in group), \
        "a model string is served where the card's model is"
    assert group[1].title == "Add a greeting · openai/model-b"
    for member, passed in zip(group, (True, False)):
        member.current_run.finish(RunState.SUCCEEDED, "done")
        Run.objects.filter(pk=member.current_run_id).update(
            agent_state={"check": {"passed": passed, "command": "ruff check .", "output": ""}}, tokens=99)
    html = client.get(f"/cards/{card.pk}/compare").content.decode()
    assert '<span class="ok">passed</span>' in row(html, group[0].pk) and "ruff check ." in row(html, group[0].pk)
    assert '<span class="run-error">failed</span>' in row(html, group[1].pk)
    assert "openai/model-b" in row(html, group[1].pk)


def test_landing_the_chosen_one_lands_it_and_removes_the_others_worktrees_branches_and_cards(
        client, card, agents, project):
    start_on(client, card, agents)
    run_all(group_of(card))
    group = group_of(card)
    assert all(c.branch and os.path.isdir(c.worktree_path) for c in group)
    chosen, others = group[1], [group[0], group[2]]

    response = client.post(f"/cards/{chosen.pk}/choose")
    assert response.status_code == 302 and response["Location"] == f"/projects/{project.pk}/"

    chosen.refresh_from_db()
    assert chosen.column == Column.DONE and chosen.landed_commit == git(project.repo_path, "rev-parse", "main").strip()
    assert chosen.variant_of_id is None, "alone, it leaves the group"
    entry = AuditEntry.objects.get(action="choose")
    assert entry.card_id_ref == chosen.pk and entry.detail == {"mode": project.land_mode}, "the mode it landed by"
    assert git(project.repo_path, "show", "main:two-b.txt").strip() == "b"
    assert not Card.objects.filter(pk__in=[c.pk for c in others]).exists()
    for other in others:
        assert not os.path.exists(other.worktree_path)
        assert git(project.repo_path, "branch", "--list", other.branch).strip() == ""
    assert not os.path.exists(chosen.worktree_path)
    assert not Run.objects.filter(state__in=("queued", "running", "awaiting_approval")).exists()
    assert not (Path(project.repo_path) / "one.txt").exists(), "the others' work did not land"
    board = client.get(f"/projects/{project.pk}/").content.decode()
    assert f'id="card-{chosen.pk}"' in board and 'class="variants-link"' not in board
    assert client.get(f"/cards/{chosen.pk}/compare").status_code == 404


def test_the_lead_may_keep_the_other_variants_branches(client, card, agents, project):
    start_on(client, card, agents[:2])
    run_all(group_of(card))
    group = group_of(card)
    response = client.post(f"/cards/{group[0].pk}/choose", {"keep_branches": "on"})
    assert response.status_code == 302
    assert not Card.objects.filter(pk=group[1].pk).exists() and not os.path.exists(group[1].worktree_path)
    assert git(project.repo_path, "show", f"{group[1].branch}:two-b.txt").strip() == "b", "kept, with its work"


def test_choosing_while_another_variant_still_runs_is_refused_and_changes_nothing(client, card, agents, project):
    start_on(client, card, agents[:2])
    group = group_of(card)
    runner.execute(group[0].current_run_id)
    main_before = git(project.repo_path, "rev-parse", "main")

    response = client.post(f"/cards/{group[0].pk}/choose")
    assert response.status_code == 409
    text = response.content.decode()
    assert 'role="alert"' in text and "Still running" in text and f"#{group[1].pk}" in text
    assert git(project.repo_path, "rev-parse", "main") == main_before
    assert Card.objects.filter(pk=group[1].pk).exists()
    assert Card.objects.get(pk=group[0].pk).column == Column.REVIEW


def test_a_card_in_a_group_links_to_the_comparison_from_its_page_and_from_the_board(client, card, agents, project):
    start_on(client, card, agents[:2])
    group = group_of(card)
    for member in group:
        assert "2 variants · compare" in client.get(f"/cards/{member.pk}/").content.decode()
    board = client.get(f"/projects/{project.pk}/").content.decode()
    assert board.count(f'href="/cards/{card.pk}/compare"') == 2
    assert board.count(">Compare 2</a>") == 2, "the link says how many variants there are"
    assert Card.objects.get(pk=card.pk).variant_count == 2 and Card.objects.get(pk=group[1].pk).variant_count == 2


def test_the_compare_link_counts_the_variants_left_after_one_is_deleted(client, card, agents, project):
    start_on(client, card, agents)
    group = group_of(card)
    assert len(group) == 3
    board = client.get(f"/projects/{project.pk}/").content.decode()
    assert board.count(">Compare 3</a>") == 3
    runner.delete_card(Card.objects.get(pk=group[2].pk), delete_branch=True)
    board = client.get(f"/projects/{project.pk}/").content.decode()
    assert board.count(">Compare 2</a>") == 2 and ">Compare 3<" not in board


def test_deleting_the_original_keeps_the_rest_of_the_group_together(client, card, agents):
    start_on(client, card, agents)
    group = group_of(card)
    run_all(group)
    runner.delete_card(Card.objects.get(pk=card.pk), delete_branch=True)
    rest = Card.objects.get(pk=group[1].pk).variant_group()
    assert [c.pk for c in rest] == [group[1].pk, group[2].pk]
    assert client.get(f"/cards/{group[2].pk}/compare").status_code == 200


@pytest.mark.parametrize("data, reason", [
    ({}, "Tick at least two agents"),
    ({"agents": ["999999"]}, "999999 is not one"),
    ({"agents": ["not-a-number"]}, "is not an agent id"),
    ({"agents": ["ONE"]}, "Tick at least two agents"),
    ({"agents": ["ONE", "TWO"], "models": "openai/x\nopenai/y"}, "Model strings are for the built-in agent"),
    ({"agents": ["ONE", "TWO"], "models": "has a space"}, "not a model string"),
])
def test_garbage_in_start_on_several_is_refused_with_422_and_starts_nothing(client, card, agents, data, reason):
    ids = {"ONE": str(agents[0].pk), "TWO": str(agents[1].pk)}
    data = {k: [ids.get(v, v) for v in value] if isinstance(value, list) else value for k, value in data.items()}
    response = client.post(f"/cards/{card.pk}/start-variants", data)
    assert response.status_code == 422
    assert reason in response.content.decode()
    assert Card.objects.count() == 1 and not Run.objects.exists()


def test_start_on_several_is_refused_for_a_card_that_is_not_in_the_backlog(client, card, agents, make_card):
    card.move_to(Column.DONE)
    response = start_on(client, card, agents[:2])
    assert response.status_code == 409 and "This card is done" in response.content.decode()
    running = make_card("sleep 30")
    running.start()
    response = start_on(client, running, agents[:2])
    assert response.status_code == 409 and "Only a card in the Backlog" in response.content.decode()
    assert not Card.objects.exclude(variant_of=None).exists()


def test_a_variant_that_cannot_start_starts_none_of_them(client, card, agents):
    builtin = Agent.objects.create(name="builtin-no-model", kind=Agent.Kind.BUILTIN)
    response = start_on(client, card, [agents[0], builtin])
    assert response.status_code == 409
    assert "Not started on builtin-no-model" in response.content.decode()
    assert Card.objects.count() == 1 and not Run.objects.exists()
    card.refresh_from_db()
    assert card.column == Column.BACKLOG and card.variant_of_id is None


def test_a_group_of_one_has_no_comparison_and_cannot_be_chosen(client, make_card):
    lone = make_card("echo hi > hi.txt")
    runner.execute(lone.start().pk)
    assert client.get(f"/cards/{lone.pk}/compare").status_code == 404
    response = client.post(f"/cards/{lone.pk}/choose")
    assert response.status_code == 404 or "no variants" in response.content.decode()
    assert client.get(f"/cards/{lone.pk}/start-variants").status_code == 405


def test_choosing_with_a_landing_mode_that_does_not_exist_answers_422(client, card, agents):
    start_on(client, card, agents[:2])
    group = group_of(card)
    run_all(group)
    response = client.post(f"/cards/{group[0].pk}/choose", {"mode": "yolo"})
    assert response.status_code == 422 and "not a landing mode" in response.content.decode()
    assert Card.objects.filter(pk__in=[c.pk for c in group]).count() == 2


def test_the_builtin_agent_on_two_models_runs_each_model_and_compares_their_tokens_and_checks(
        client, card, project, fake_llm, model_key):
    def write(body):
        files = ["SMALL.md"] if body["model"].endswith("small") else ["LARGE.md", "MORE.md"]
        return {"tool_calls": [{"name": "write_file", "arguments": {"path": name, "content": f"{name}\n"}}
                               for name in files]}

    server = fake_llm([write, {"tool_calls": [{"name": "finish", "arguments": {"summary": "Wrote it"}}]}])
    project.model, project.api_base, project.api_key_env = "openai/fake-model", server.base_url, model_key
    project.check_command = "test -n \"$(ls *.md)\""
    project.save()
    builtin = Agent.objects.create(name="builtin", kind=Agent.Kind.BUILTIN)
    response = start_on(client, card, [builtin], models="openai/model-small\nopenai/model-large")
    assert response.status_code == 302
    run_all(group_of(card))

    group = group_of(card)
    assert sorted(body["model"] for body in server.requests) == ["model-large"] * 2 + ["model-small"] * 2
    assert all(c.column == Column.REVIEW and c.current_run.tokens > 0 for c in group)
    html = client.get(f"/cards/{card.pk}/compare").content.decode()
    small, large = row(html, group[0].pk), row(html, group[1].pk)
    assert "openai/model-small" in small and "openai/model-large" in large
    assert "1 file <span class=\"added\">+1</span>" in small and "2 files <span class=\"added\">+2</span>" in large
    for found, member in ((small, group[0]), (large, group[1])):
        assert '<span class="ok">passed</span>' in found and "test -n" in found
        assert f'class="variant-tokens">{member.current_run.tokens}<' in found


def test_the_comparison_refreshes_itself_and_offers_stop_while_a_variant_runs(client, card, agents):
    start_on(client, card, agents[:2])
    group = group_of(card)
    runner.execute(group[0].current_run_id)
    html = client.get(f"/cards/{card.pk}/compare").content.decode()
    assert f'hx-get="/cards/{card.pk}/compare?part=rows"' in html and 'hx-trigger="every 2s"' in html
    assert f'formaction="/cards/{group[1].pk}/stop"' in row(html, group[1].pk)
    part = client.get(f"/cards/{card.pk}/compare?part=rows").content.decode()
    assert part.lstrip().startswith('<div id="compare-rows"') and "<html" not in part
    runner.execute(group[1].current_run_id)
    html = client.get(f"/cards/{card.pk}/compare").content.decode()
    assert "every 2s" not in html, "nothing runs: no more polling"
