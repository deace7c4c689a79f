"""An event's own registration questions, and checking a registrant's answers against them.

Pure: definitions and answers in, clean values or an error naming the field out.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

QuestionType = Literal["text", "choice", "yes_no"]
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_QUESTIONS = 30
MAX_TEXT = 2000


class Question(msgspec.Struct, forbid_unknown_fields=True):
    key: str
    label: str
    type: QuestionType
    required: bool = False
    choices: list[str] = []
    multiple: bool = False


class QuestionError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def check_questions(questions: list[Question]) -> list[dict[str, Any]]:
    """Validate an organizer's question list; returns it as plain JSON for storage."""
    if len(questions) > MAX_QUESTIONS:
        raise QuestionError("questions", f"at most {MAX_QUESTIONS} questions")
    seen: set[str] = set()
    for index, q in enumerate(questions):
        where = f"questions[{index}]"
        if not _KEY.match(q.key):
            raise QuestionError(f"{where}.key", "lower-case letters, digits and _; 1 to 40")
        if q.key in seen:
            raise QuestionError(f"{where}.key", f"{q.key!r} is used twice")
        seen.add(q.key)
        if not q.label.strip() or len(q.label) > 500:
            raise QuestionError(f"{where}.label", "must be 1 to 500 characters")
        if q.type == "choice":
            if not q.choices or len(set(q.choices)) != len(q.choices):
                raise QuestionError(f"{where}.choices", "give distinct choices")
            if any(not c.strip() or len(c) > 200 for c in q.choices):
                raise QuestionError(f"{where}.choices", "each choice must be 1 to 200 characters")
        elif q.choices or q.multiple:
            raise QuestionError(f"{where}.choices", "only a choice question has choices")
    return [msgspec.to_builtins(q) for q in questions]


def check_answers(stored: list[dict[str, Any]], answers: dict[str, Any]) -> dict[str, Any]:
    """The answers, cleaned; every required question answered, nothing unknown."""
    questions = [msgspec.convert(q, Question) for q in stored]
    known = {q.key for q in questions}
    for key in answers:
        if key not in known:
            raise QuestionError(f"answers.{key}", "this event asks no such question")
    clean: dict[str, Any] = {}
    for q in questions:
        field = f"answers.{q.key}"
        value = answers.get(q.key)
        if value is None or value == [] or (isinstance(value, str) and not value.strip()):
            if q.required:
                raise QuestionError(field, "an answer is required")
            continue
        if q.type == "text":
            if not isinstance(value, str) or len(value) > MAX_TEXT:
                raise QuestionError(field, f"must be text of at most {MAX_TEXT} characters")
            clean[q.key] = value.strip()
        elif q.type == "yes_no":
            if not isinstance(value, bool):
                raise QuestionError(field, "must be true or false")
            clean[q.key] = value
        else:
            picked = value if isinstance(value, list) else [value]
            if not q.multiple and len(picked) != 1:
                raise QuestionError(field, "choose one")
            for choice in picked:
                if choice not in q.choices:
                    raise QuestionError(field, f"{choice!r} is not one of the choices")
            clean[q.key] = picked if q.multiple else picked[0]
    return clean
