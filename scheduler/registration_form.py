"""The registration forms as people fill them in: reading a submitted form, and naming what is
wrong with each field in the visitor's language before the services see it.

The services check everything again (and name fields in English for the API); this module
exists so that a person gets every problem at once, each next to its field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import iso3166
import msgspec
from babel import Locale
from litestar.datastructures import FormMultiDict

from scheduler import i18n
from scheduler.models import CONSTITUENCIES
from scheduler.questions import MAX_TEXT, Question
from scheduler.registrations import RegistrationCreate, RegistrationUpdate
from scheduler.speakers import SpeakerRequestCreate
from scheduler.timezones import is_valid_zone

# The same rule as the API's Email type.
EMAIL = re.compile(
    r"^[^@\s<>()\[\],;:\"\\\x00-\x1f\x7f]+@[^@\s<>()\[\],;:\"\\\x00-\x1f\x7f]+"
    r"\.[^@\s<>()\[\],;:\"\\\x00-\x1f\x7f]+$"
)
LIMITS = {"name": 200, "email": 320, "organisation": 300, "region": 80, "topic": 300}


@dataclass
class Checked:
    """A form read back: what was typed (to show again), the errors, and the clean input."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def fail(self, name: str, lang: str, key: str, **params: Any) -> None:
        self.errors.setdefault(name, i18n.text(lang, f"error.{key}", **params))


def field_id(name: str) -> str:
    """The HTML id of a field: "answers.topic" -> "f-answers-topic"."""
    return "f-" + re.sub(r"[^a-zA-Z0-9_-]", "-", name)


def questions_of(stored: list[dict[str, Any]]) -> list[Question]:
    return [msgspec.convert(q, Question) for q in stored]


def countries(lang: str) -> list[tuple[str, str]]:
    """(alpha-3, name in ``lang``) for every ISO 3166 country, sorted by name."""
    names = Locale.parse(lang).territories
    out = [(c.alpha3, str(names.get(c.alpha2, c.apolitical_name))) for c in iso3166.countries]
    return sorted(out, key=lambda pair: pair[1].casefold())


def constituencies(lang: str) -> list[tuple[str, str]]:
    return i18n.options(lang, "constituency", CONSTITUENCIES)


PERSON_FIELDS = ("name", "email", "organisation", "constituency", "country", "region")


def labels(lang: str, questions: list[Question]) -> dict[str, str]:
    """Field name -> its label, so the list of problems says which field each is about."""
    out = {
        name: i18n.text(lang, f"field.{name}") for name in (*PERSON_FIELDS, "language", "time_zone")
    }
    out.update({f"answers.{q.key}": q.label for q in questions})
    return out


def speaker_labels(lang: str) -> dict[str, str]:
    return {
        "topic": i18n.text(lang, "manage.topic"),
        "summary": i18n.text(lang, "manage.summary"),
        "language": i18n.text(lang, "manage.speaking_language"),
    }


def _text(form: FormMultiDict, name: str) -> str:
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def _person(form: FormMultiDict, lang: str, checked: Checked, names: tuple[str, ...]) -> None:
    for name in names:
        value = _text(form, name)
        checked.values[name] = value
        limit = LIMITS.get(name)
        if limit is not None and len(value) > limit:
            checked.fail(name, lang, "too_long", max=i18n.number(limit, lang))
    v = checked.values
    if "name" in names and not v["name"]:
        checked.fail("name", lang, "required")
    if "email" in names:
        if not v["email"]:
            checked.fail("email", lang, "required")
        elif not EMAIL.match(v["email"]):
            checked.fail("email", lang, "email")
    if "constituency" in names and v["constituency"] not in CONSTITUENCIES:
        checked.fail("constituency", lang, "choose")
    if "country" in names and v["country"] not in iso3166.countries_by_alpha3:
        checked.fail("country", lang, "choose")
    if "language" in names and v["language"] not in i18n.LANGUAGES:
        checked.fail("language", lang, "choose")
    if "time_zone" in names and not is_valid_zone(v["time_zone"]):
        checked.fail("time_zone", lang, "time_zone")


def _answers(
    form: FormMultiDict, questions: list[Question], lang: str, checked: Checked
) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for q in questions:
        name = f"answers.{q.key}"
        if q.type == "choice" and q.multiple:
            picked = [c for c in form.getall(name, []) if isinstance(c, str)]
            checked.values[name] = picked
            if any(c not in q.choices for c in picked):
                checked.fail(name, lang, "choose")
            elif picked:
                answers[q.key] = picked
        elif q.type == "choice":
            choice = _text(form, name)
            checked.values[name] = choice
            if choice and choice not in q.choices:
                checked.fail(name, lang, "choose")
            elif choice:
                answers[q.key] = choice
        elif q.type == "yes_no":
            said = _text(form, name)
            checked.values[name] = said
            if said in ("yes", "no"):
                answers[q.key] = said == "yes"
            elif said:
                checked.fail(name, lang, "choose")
        else:
            typed = _text(form, name)
            checked.values[name] = typed
            if len(typed) > MAX_TEXT:
                checked.fail(name, lang, "too_long", max=i18n.number(MAX_TEXT, lang))
            elif typed:
                answers[q.key] = typed
        if q.required and q.key not in answers:
            checked.fail(name, lang, "required" if q.type == "text" else "choose")
    return answers


def read_registration(
    form: FormMultiDict, questions: list[Question], lang: str, *, organisation_required: bool
) -> tuple[Checked, RegistrationCreate | None]:
    checked = Checked()
    _person(
        form,
        lang,
        checked,
        (*PERSON_FIELDS, "language", "time_zone"),
    )
    if organisation_required and not checked.values["organisation"]:
        checked.fail("organisation", lang, "organisation")
    answers = _answers(form, questions, lang, checked)
    if checked.errors:
        return checked, None
    v = checked.values
    data = RegistrationCreate(
        name=v["name"],
        email=v["email"],
        constituency=v["constituency"],
        country=v["country"],
        language=v["language"],
        time_zone=v["time_zone"],
        organisation=v["organisation"],
        region=v["region"],
        answers=answers,
    )
    return checked, data


def read_update(
    form: FormMultiDict, questions: list[Question], lang: str
) -> tuple[Checked, RegistrationUpdate | None]:
    checked = Checked()
    _person(form, lang, checked, ("name", "organisation", "region", "language", "time_zone"))
    answers = _answers(form, questions, lang, checked)
    if checked.errors:
        return checked, None
    v = checked.values
    data = RegistrationUpdate(
        name=v["name"],
        organisation=v["organisation"],
        region=v["region"],
        language=v["language"],
        time_zone=v["time_zone"],
        answers=answers,
    )
    return checked, data


def read_speaker_request(
    form: FormMultiDict, lang: str
) -> tuple[Checked, SpeakerRequestCreate | None]:
    checked = Checked()
    topic, summary, language = (_text(form, n) for n in ("topic", "summary", "language"))
    checked.values.update(topic=topic, summary=summary, language=language)
    if not topic:
        checked.fail("topic", lang, "required")
    elif len(topic) > LIMITS["topic"]:
        checked.fail("topic", lang, "too_long", max=i18n.number(LIMITS["topic"], lang))
    if len(summary) > 2000:
        checked.fail("summary", lang, "too_long", max=i18n.number(2000, lang))
    if language not in i18n.LANGUAGES:
        checked.fail("language", lang, "choose")
    if checked.errors:
        return checked, None
    return checked, SpeakerRequestCreate(topic=topic, language=language, summary=summary)  # type: ignore[arg-type]


def answers_as_values(answers: Mapping[str, Any]) -> dict[str, Any]:
    """Stored answers as the form shows them (yes/no radios, checkbox lists)."""
    out: dict[str, Any] = {}
    for key, value in answers.items():
        if isinstance(value, bool):
            out[f"answers.{key}"] = "yes" if value else "no"
        else:
            out[f"answers.{key}"] = value
    return out


def service_error(field_name: str | None, reason: str, lang: str) -> tuple[str, str]:
    """A service's refusal as (field or "", text to show): known cases in the visitor's language."""
    name = field_name or ""
    if name == "email" and "already registered" in reason:
        return name, i18n.text(lang, "error.duplicate")
    if reason == "an answer is required":
        return name, i18n.text(lang, "error.required")
    if name.startswith("answers.") or name in LIMITS or name in ("country", "time_zone"):
        return name, reason
    return "", reason
