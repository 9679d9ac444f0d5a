"""MkDocs hook: the settings page's table, generated from the settings classes themselves.

Every ``pydantic_settings.BaseSettings`` subclass defined in the modules of
:data:`SETTINGS_MODULES` (a module that does not exist is skipped) gets one table of
the fields it defines itself: the environment variable, the default, what it
accepts and the field's description. A class that inherits another listed class
shows only what it adds, so every field appears once. The table replaces the
:data:`MARKER` line of ``settings.md``; a build without any settings class fails.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
import typing
from pathlib import Path

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

# The one list of modules whose settings classes the page shows, in page order.
SETTINGS_MODULES = (
    "arr_coc.settings",
    "arr_coc.pricing",
    "serving.settings",
    "training_hooks.tracking.settings",
)
MARKER = "<!-- settings-table -->"
PAGE = "settings.md"
ROOT = Path(__file__).resolve().parents[2]


def settings_classes() -> list[type[BaseSettings]]:
    """The settings classes of :data:`SETTINGS_MODULES`, in module order, then in order of definition."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    found = []
    for name in SETTINGS_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name is not None and (name == error.name or name.startswith(error.name + ".")):
                continue  # the module (or its package) does not exist: nothing to show
            raise
        classes = [
            value
            for value in vars(module).values()
            if inspect.isclass(value)
            and issubclass(value, BaseSettings)
            and value is not BaseSettings
            and value.__module__ == module.__name__
        ]
        found.extend(sorted(classes, key=lambda cls: inspect.getsourcelines(cls)[1]))
    return found


def own_fields(cls: type[BaseSettings]) -> dict[str, FieldInfo]:
    """The fields ``cls`` defines itself: not those of a settings class it inherits."""
    inherited = set()
    for base in cls.__mro__[1:]:
        if inspect.isclass(base) and issubclass(base, BaseSettings) and base is not BaseSettings:
            inherited.update(base.model_fields)
    return {name: field for name, field in cls.model_fields.items() if name not in inherited}


def env_name(cls: type[BaseSettings], name: str, field: FieldInfo) -> str:
    """The environment variable a field reads: ``ARR_COC_<FIELD>`` with the project's prefix."""
    if isinstance(field.validation_alias, str):
        return field.validation_alias.upper()
    return f"{cls.model_config.get('env_prefix', '')}{name}".upper()


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, Path):
        home = str(Path.home())
        text = str(value)
        text = "~" + text[len(home) :] if text.startswith(home) else text
    else:
        text = str(value)
    return f"`{text}`" if text else "`''`"


def _accepts(field: FieldInfo) -> str:
    annotation = field.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(f"`{choice}`" for choice in typing.get_args(annotation))
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kind = " or ".join(getattr(arg, "__name__", str(arg)) for arg in typing.get_args(annotation))
    else:
        kind = {
            bool: "boolean",
            int: "integer",
            float: "number",
            str: "text",
            Path: "path",
            SecretStr: "text (secret)",
        }.get(annotation, getattr(annotation, "__name__", str(annotation)))
    bounds = []
    for item in field.metadata:
        for attribute, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            if isinstance(item, getattr(annotated_types, attribute.capitalize())):
                bounds.append(f"{sign} {getattr(item, attribute)}")
    return " ".join([kind, ", ".join(bounds)]).strip()


def _escape(text: str) -> str:
    for char, escaped in (("\\", "\\\\"), ("|", "\\|"), ("<", "&lt;"), (">", "&gt;"), ("*", "\\*"), ("`", "\\`")):
        text = text.replace(char, escaped)
    return " ".join(text.split())


def settings_markdown() -> str:
    """One section per settings class: its docstring's first line and a table of its own fields."""
    classes = settings_classes()
    if not classes:
        raise RuntimeError(f"no settings class found in {', '.join(SETTINGS_MODULES)}")
    sections = []
    for cls in classes:
        fields = own_fields(cls)
        if not fields:
            continue
        summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
        rows = [
            f"| `{env_name(cls, name, field)}` | {_default(field)} | {_accepts(field)} | "
            f"{_escape(field.description or '')} |"
            for name, field in fields.items()
        ]
        sections.append(
            "\n".join(
                [
                    f"### `{cls.__module__}.{cls.__qualname__}`",
                    "",
                    summary,
                    "",
                    "| variable | default | accepts | meaning |",
                    "|---|---|---|---|",
                    *rows,
                ]
            )
        )
    return "\n\n".join(sections)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace the settings page's marker with the generated tables."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise RuntimeError(f"{PAGE} has lost its {MARKER} line")
    return markdown.replace(MARKER, settings_markdown())
