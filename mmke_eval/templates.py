"""Prompt templates: Jinja files under templates/, looked up by relative name ("mmke/probe.jinja")."""

from __future__ import annotations

from functools import lru_cache

import jinja2

from mmke_eval.resources import resource_path


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    # StrictUndefined: a template naming a field the caller did not pass is an error, not "".
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_path("templates"))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )


def render(name: str, **values) -> str:
    try:
        template = environment().get_template(name)
    except jinja2.TemplateNotFound:
        raise FileNotFoundError(f"prompt template {name!r} not found under {resource_path('templates')}") from None
    return template.render(**values)
