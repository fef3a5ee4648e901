"""Shared bits of the board's management commands."""

from __future__ import annotations

from django import forms
from django.core.management.base import CommandError


def form_errors(form: forms.BaseForm) -> CommandError:
    """One CommandError (exit status 1) listing every error of an invalid form, field by field."""
    lines = []
    for field, errors in form.errors.items():
        label = "" if field == "__all__" else f"{field}: "
        lines.extend(f"{label}{e}" for e in errors)
    return CommandError("\n".join(lines))
