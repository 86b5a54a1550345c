"""
The declarative alert rules: the schema of a rules file and the pure helpers built on it.

A rules file (YAML) holds the customer segments, the points-based prior (and its onboarding
profile for customers with little history), the score, decline, event and inactivity rules,
and the routing of alerts to actions. `parse_rules` validates one and raises `ConfigError`
listing every problem at once, each as `file:line: field: message`.

The helpers (`segment_of`, `is_onboarding`, `prior_points`, `route`, `rules_fingerprint`)
are pure functions over a validated `RulesFile`. `load_rules` and `default_rules` are the
only functions here that read a file; they run once, at startup.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeAlias, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from churnwatch.core.errors import ConfigError
from churnwatch.core.events import Severity as TicketSeverity
from churnwatch.core.events import TicketStatus
from churnwatch.core.features import FEATURE_NAMES

KNOWN_FEATURES: Final[tuple[str, ...]] = FEATURE_NAMES
"""The feature names a point rule may test (the names core/features.py computes)."""

LABEL_PLACEHOLDERS: Final[tuple[str, ...]] = ("value", "pct", "pct_down", "pct_up", "threshold")
"""The names a point rule's label may use: the value, value*100, the drop and the rise below
and above 1 in percent (for ratios such as `login_trend`), and the rule's threshold."""

Severity = Literal["low", "medium", "high"]
Action = Literal["email", "csm_task"]
EventKind = Literal["login", "purchase", "ticket", "return"]

CATCH_ALL_SEGMENT: Final = "default"
"""The key of a score rule's threshold for segments it does not list."""

Loc: TypeAlias = tuple[str | int, ...]
Issue: TypeAlias = tuple[Loc, str]

_ISSUES: Final = "churnwatch_rules"
"""Pydantic error type that carries several located issues found by one validator."""


# ---------------------------------------------------------------------------------------------
# Small validation helpers


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown(what: str, value: object, options: tuple[str, ...]) -> str:
    """
    "unknown feature 'x' (did you mean 'y'?)", or the options when nothing is close.
    """
    close = difflib.get_close_matches(str(value), options, n=1) if isinstance(value, str) else []
    if close:
        return f"unknown {what} {_short(value)} (did you mean {close[0]!r}?)"
    return f"unknown {what} {_short(value)} (expected one of: {', '.join(options)})"


def _path(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _raise_issues(issues: list[Issue]) -> None:
    """
    Raise every issue at once, each with its location relative to the value validated.
    """
    if issues:
        summary = "; ".join(f"{_path(loc) or '(here)'}: {msg}" for loc, msg in issues)
        raise PydanticCustomError(
            _ISSUES, "{summary}", {"summary": summary, "issues": tuple(issues)}
        )


_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        msg = (
            "must be 1 to 64 lowercase letters, digits or underscores, starting with a letter, "
            f"got {_short(value)}"
        )
        raise ValueError(msg)
    return value


def _check_version(value: str) -> str:
    if not value or any(c.isspace() for c in value):
        msg = f"must be a non-empty string without spaces such as '2026.11.1', got {_short(value)}"
        raise ValueError(msg)
    return value


Name = Annotated[str, Strict(), AfterValidator(_check_name)]
Version = Annotated[str, Strict(), AfterValidator(_check_version)]
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
NonNegative = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
ScoreValue = Annotated[float, Strict(), Field(ge=0, le=100, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# The schema


class Segment(_Model):
    """
    A customer segment by lifetime value: customers with `ltv >= min_ltv` (first match wins).
    """

    name: Name
    min_ltv: NonNegative


class PointRule(_Model):
    """
    Add `points` to the health score when `feature` is above (or below) a threshold.
    """

    feature: str
    above: Number | None = None
    below: Number | None = None
    points: Number
    label: Annotated[str, Field(min_length=1)]

    @field_validator("feature")
    @classmethod
    def _known_feature(cls, value: str) -> str:
        if value not in KNOWN_FEATURES:
            raise ValueError(_unknown("feature", value, KNOWN_FEATURES))
        return value

    @field_validator("label")
    @classmethod
    def _formattable(cls, value: str) -> str:
        try:
            _format_label(value, 1.0, 1.0)
        except KeyError as exc:
            msg = (
                f"unknown placeholder {{{exc.args[0]}}} in {_short(value)} "
                f"(expected one of: {', '.join(LABEL_PLACEHOLDERS)})"
            )
            raise ValueError(msg) from None
        except (ValueError, IndexError, AttributeError) as exc:
            msg = f"cannot format {_short(value)}: {exc}"
            raise ValueError(msg) from None
        return value

    @model_validator(mode="after")
    def _one_threshold(self) -> PointRule:
        if (self.above is None) == (self.below is None):
            got = (
                "neither"
                if self.above is None
                else f"both (above {self.above}, below {self.below})"
            )
            _raise_issues([((), f"set exactly one of `above` or `below`, got {got}")])
        return self

    @property
    def threshold(self) -> float:
        """
        The `above` or `below` value, whichever is set.
        """
        # validation sets exactly one of them
        return self.above if self.above is not None else self.below  # type: ignore[return-value]

    def matches(self, value: float) -> bool:
        """
        Whether `value` is strictly beyond the threshold (NaN never matches).
        """
        if self.above is not None:
            return value > self.above
        return value < self.threshold

    def text(self, value: float) -> str:
        """
        The label, filled in with `value`.
        """
        return _format_label(self.label, value, self.threshold)


def _format_label(label: str, value: float, threshold: float) -> str:
    return label.format(
        value=value,
        pct=value * 100.0,
        pct_down=max(0.0, (1.0 - value) * 100.0),
        pct_up=max(0.0, (value - 1.0) * 100.0),
        threshold=threshold,
    )


class Prior(_Model):
    """
    The points-based health score: `base` plus the points of every matching rule.
    """

    base: ScoreValue
    points: tuple[PointRule, ...] = ()


class Onboarding(_Model):
    """
    The prior's profile for customers with little history (young or with few events).
    """

    max_tenure_days: Positive
    min_events: Annotated[int, Strict(), Field(ge=0)]
    base: ScoreValue
    points: tuple[PointRule, ...] = ()


class ScoreRule(_Model):
    """
    Fire when the engagement score falls below the segment's threshold; re-arm above it + margin.
    """

    name: Name
    thresholds: dict[str, ScoreValue]
    margin: NonNegative
    cooldown_days: NonNegative
    severity: Severity

    @model_validator(mode="after")
    def _has_default(self) -> ScoreRule:
        issues: list[Issue] = []
        if CATCH_ALL_SEGMENT not in self.thresholds:
            issues.append((("thresholds", CATCH_ALL_SEGMENT), "field required"))
        for segment, threshold in self.thresholds.items():
            if threshold + self.margin > 100:
                msg = (
                    f"threshold {threshold:g} + margin {self.margin:g} is above 100, "
                    "so the rule would never re-arm"
                )
                issues.append((("thresholds", segment), msg))
        _raise_issues(issues)
        return self

    def threshold_for(self, segment: str) -> float:
        """
        The threshold of `segment`, or the `default` one when the segment is not listed.
        """
        return self.thresholds.get(segment, self.thresholds[CATCH_ALL_SEGMENT])


class DeclineRule(_Model):
    """
    Fire when the score fell by at least `drop` points within `within_days` and, when `below`
    is set, ended below it (a fall from 95 to 70 is a change, not yet a risk).
    """

    name: Name
    drop: Annotated[float, Strict(), Field(gt=0, le=100, allow_inf_nan=False)]
    within_days: Positive
    cooldown_days: NonNegative
    severity: Severity
    below: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] | None = None


_CURRENCY = re.compile(r"[A-Z]{3}")

_WHERE_FIELDS: Final[dict[str, dict[str, tuple[str, ...] | None]]] = {
    # None: any string (currency: a three-letter code)
    "ticket": {"severity": get_args(TicketSeverity), "status": get_args(TicketStatus)},
    "purchase": {"currency": None},
    "return": {"reason": None},
    "login": {"channel": None},
}


class EventRule(_Model):
    """
    Fire on an event of type `event` whose fields match `where` (every key; any listed value),
    or on the `count`-th such event within `within_days`.
    """

    name: Name
    event: EventKind
    where: dict[str, list[str]] = Field(default_factory=dict)
    count: Annotated[int, Strict(), Field(ge=1)] = 1
    within_days: Positive | None = None
    severity: Severity
    cooldown_days: NonNegative

    @model_validator(mode="after")
    def _check(self) -> EventRule:
        issues: list[Issue] = []
        fields = _WHERE_FIELDS[self.event]
        for key, values in self.where.items():
            if key not in fields:
                issues.append((("where", key), _unknown(f"{self.event} field", key, tuple(fields))))
                continue
            if not values:
                issues.append(
                    (("where", key), "an empty list matches nothing; omit the key to match any")
                )
            allowed = fields[key]
            for i, value in enumerate(values):
                if allowed is not None and value not in allowed:
                    issues.append(
                        (("where", key, i), _unknown(f"{self.event} {key}", value, allowed))
                    )
                elif key == "currency" and not _CURRENCY.fullmatch(value):
                    msg = f"must be a three-letter currency code such as 'EUR', got {_short(value)}"
                    issues.append((("where", key, i), msg))
        if self.count > 1 and self.within_days is None:
            issues.append(
                (("within_days",), f"field required when count > 1 (count is {self.count})")
            )
        _raise_issues(issues)
        return self


class InactivityRule(_Model):
    """
    Fire when a customer has been silent for `days`, or for `gap_multiple` times their usual
    gap between purchases, whichever is later (`gap_multiple: 0` disables the relative part).
    """

    name: Name
    days: Positive
    gap_multiple: NonNegative
    severity: Severity
    cooldown_days: NonNegative


def _check_checkpoints(days: tuple[float, ...]) -> tuple[float, ...]:
    if not days:
        msg = "expected at least one checkpoint in days, such as [7, 14], got []"
        raise ValueError(msg)
    if any(b <= a for a, b in itertools.pairwise(days)):
        listed = ", ".join(f"{d:g}" for d in days)
        msg = f"must be strictly increasing, got [{listed}]"
        raise ValueError(msg)
    return days


SilenceCheckpoints = Annotated[tuple[Positive, ...], AfterValidator(_check_checkpoints)]


class LabelRules(_Model):
    """
    How a silence becomes a training label (the optional `labels` section; absent, the engine's
    own: silent for the label horizon H, snapshots at its silence checkpoints).

    `gap_multiple` k > 0: a training snapshot is positive only when the customer stays silent
    for the longer of H and k times its usual gap between purchases (as the snapshot saw it).
    `silence_checkpoints_days`: the days into a silence at which the sweep re-scores the
    customer and takes a training snapshot, in place of the engine's (a ladder of 7, 14, 30,
    60, 90, 180 and 365 days, with snapshots up to twice the horizon).
    `horizon_days`: the label horizon H, fixed, in place of the one learned from the stream
    (the 90th percentile of the gaps between activities, at least the engine's horizon).
    """

    gap_multiple: NonNegative = 0.0
    silence_checkpoints_days: SilenceCheckpoints | None = None
    horizon_days: Positive | None = None


class ModelRules(_Model):
    """
    How the learned model learns for this rules file (the optional `model` section; absent,
    the engine's own: the features alone, SGD at `ModelConfig.learning_rate` and `l2`).

    `prior_input`: the prior's churn probability, as a logit (`PRIOR_INPUT`), is one more input
    of the learned model, so the model starts from the rules' own judgement and learns what to
    add to it. `learning_rate` and `l2`: the SGD step and the L2 penalty of the logistic
    regression, in place of the engine config's. `optimizer`: `adagrad` (the engine's) or
    `sgd` (a constant step).
    """

    prior_input: Annotated[bool, Strict()] = False
    optimizer: Literal["adagrad", "sgd"] | None = None
    learning_rate: Positive | None = None
    l2: NonNegative | None = None


PRIOR_INPUT: Final = "prior_logit"
"""The name of the prior's input to the model, with `model.prior_input`."""
PRIOR_LOGIT_BOUND: Final = 0.01
"""The prior's probability is taken within [this, 1 - this] before its logit (the points
reach 0 and 100)."""


def prior_logit(probability: float) -> float:
    """
    The model input `PRIOR_INPUT`: log(p / (1 - p)) of the prior's churn probability, p taken
    within [`PRIOR_LOGIT_BOUND`, 1 - `PRIOR_LOGIT_BOUND`].
    """
    p = min(max(probability, PRIOR_LOGIT_BOUND), 1.0 - PRIOR_LOGIT_BOUND)
    return math.log(p / (1.0 - p))


class RouteWhen(_Model):
    """
    The conditions of a route; an omitted key matches anything.
    """

    segment: Annotated[tuple[str, ...], Field(min_length=1)] | None = None
    severity: Annotated[tuple[Severity, ...], Field(min_length=1)] | None = None
    rule: Annotated[tuple[str, ...], Field(min_length=1)] | None = None

    @property
    def is_catch_all(self) -> bool:
        """
        Whether this matches every alert.
        """
        return self.segment is None and self.severity is None and self.rule is None

    def matches(self, *, segment: str, severity: str, rule: str) -> bool:
        """
        Whether an alert with these properties matches every given condition.
        """
        return (
            (self.segment is None or segment in self.segment)
            and (self.severity is None or severity in self.severity)
            and (self.rule is None or rule in self.rule)
        )


class Route(_Model):
    """
    Send alerts that match `when` to `action`.
    """

    when: RouteWhen
    action: Action


def _check_segments(segments: tuple[Segment, ...]) -> tuple[Segment, ...]:
    issues: list[Issue] = []
    if not segments:
        issues.append(((), "expected at least one segment (the last with min_ltv 0)"))
    seen: dict[str, int] = {}
    for i, segment in enumerate(segments):
        if segment.name == CATCH_ALL_SEGMENT:
            msg = f"{CATCH_ALL_SEGMENT!r} is reserved for the catch-all threshold of score rules"
            issues.append(((i, "name"), msg))
        elif segment.name in seen:
            msg = f"duplicate segment name {segment.name!r} (also segments[{seen[segment.name]}])"
            issues.append(((i, "name"), msg))
        seen.setdefault(segment.name, i)
        if i > 0 and segment.min_ltv >= segments[i - 1].min_ltv:
            msg = (
                f"must be below the previous segment's min_ltv ({segments[i - 1].min_ltv:g}) "
                f"because the first match from the top wins, got {segment.min_ltv:g}"
            )
            issues.append(((i, "min_ltv"), msg))
    if segments and segments[-1].min_ltv != 0:
        last = segments[-1].min_ltv
        msg = f"the last segment must have min_ltv 0 so every customer has one, got {last:g}"
        issues.append(((len(segments) - 1, "min_ltv"), msg))
    _raise_issues(issues)
    return segments


def _check_routing(routing: tuple[Route, ...]) -> tuple[Route, ...]:
    issues: list[Issue] = []
    if not routing:
        issues.append(((), "expected at least one route (the last with an empty `when`)"))
    catch_all: int | None = None
    for i, item in enumerate(routing):
        if catch_all is not None:
            msg = f"unreachable: routing[{catch_all}] above already matches every alert"
            issues.append(((i,), msg))
        elif item.when.is_catch_all:
            catch_all = i
    if routing and not routing[-1].when.is_catch_all:
        keys = ", ".join(k for k in ("segment", "severity", "rule") if getattr(routing[-1].when, k))
        msg = (
            "the last route must match every alert (an empty `when: {}`) so each alert "
            f"gets an action, got conditions on {keys}"
        )
        issues.append(((len(routing) - 1, "when"), msg))
    _raise_issues(issues)
    return routing


Segments = Annotated[tuple[Segment, ...], AfterValidator(_check_segments)]
Routing = Annotated[tuple[Route, ...], AfterValidator(_check_routing)]
ScoreRules = tuple[ScoreRule, ...]
DeclineRules = tuple[DeclineRule, ...]
EventRules = tuple[EventRule, ...]


class RulesFile(_Model):
    """
    A whole rules file.
    """

    version: Version
    segments: Segments
    prior: Prior
    onboarding: Onboarding
    score_rules: ScoreRules = ()
    decline_rules: DeclineRules = ()
    event_rules: EventRules = ()
    inactivity: InactivityRule
    routing: Routing
    labels: LabelRules | None = None
    model: ModelRules | None = None

    @model_validator(mode="after")
    def _cross_check(self) -> RulesFile:
        _raise_issues(_cross_issues({name: getattr(self, name) for name in _SECTIONS}))
        return self

    @property
    def rule_names(self) -> tuple[str, ...]:
        """
        The names of every rule, in file order (they are the `rule` of an alert).
        """
        return tuple(name for _, name in _rule_names({s: getattr(self, s) for s in _SECTIONS}))

    @property
    def model_inputs(self) -> tuple[str, ...]:
        """
        The names of the learned model's inputs: the features, then `PRIOR_INPUT` when the
        `model` section asks for it.
        """
        if self.model is not None and self.model.prior_input:
            return (*FEATURE_NAMES, PRIOR_INPUT)
        return FEATURE_NAMES


_SECTIONS: Final[dict[str, TypeAdapter[Any]]] = {
    "segments": TypeAdapter(Segments),
    "score_rules": TypeAdapter(ScoreRules),
    "decline_rules": TypeAdapter(DeclineRules),
    "event_rules": TypeAdapter(EventRules),
    "inactivity": TypeAdapter(InactivityRule),
    "routing": TypeAdapter(Routing),
}
"""The sections that the checks across sections read, with a validator for each alone."""

_RULE_SECTIONS: Final = ("score_rules", "decline_rules", "event_rules")


def _rule_names(sections: Mapping[str, Any]) -> Iterator[tuple[Loc, str]]:
    for section in _RULE_SECTIONS:
        for i, item in enumerate(sections.get(section) or ()):
            yield (section, i, "name"), item.name
    if sections.get("inactivity") is not None:
        yield ("inactivity", "name"), sections["inactivity"].name


def _cross_issues(sections: Mapping[str, Any]) -> list[Issue]:
    """
    Checks that span sections; a section absent from `sections` (it failed validation) is
    skipped, so these issues can be reported alongside the errors of other sections.
    """
    issues: list[Issue] = []
    first: dict[str, Loc] = {}
    for loc, name in _rule_names(sections):
        if name in first:
            msg = f"duplicate rule name {name!r} (also used by {_path(first[name][:-1])})"
            issues.append((loc, msg))
        first.setdefault(name, loc)
    segments: tuple[Segment, ...] | None = sections.get("segments")
    if segments is not None:
        known = tuple(s.name for s in segments)
        for i, rule in enumerate(sections.get("score_rules") or ()):
            for key in rule.thresholds:
                if key != CATCH_ALL_SEGMENT and key not in known:
                    where: Loc = ("score_rules", i, "thresholds", key)
                    issues.append((where, _unknown("segment", key, (*known, CATCH_ALL_SEGMENT))))
        for i, item in enumerate(sections.get("routing") or ()):
            for j, segment in enumerate(item.when.segment or ()):
                if segment not in known:
                    where = ("routing", i, "when", "segment", j)
                    issues.append((where, _unknown("segment", segment, known)))
    if all(section in sections for section in (*_RULE_SECTIONS, "inactivity")):
        names = tuple(first)
        for i, item in enumerate(sections.get("routing") or ()):
            for j, rule in enumerate(item.when.rule or ()):
                if rule not in names:
                    issues.append(
                        (("routing", i, "when", "rule", j), _unknown("rule", rule, names))
                    )
    return issues


# ---------------------------------------------------------------------------------------------
# Loading


def load_rules(path: Path) -> RulesFile:
    """
    Read and validate a rules file.

    Args:
        path: the YAML file; error messages name it as given.

    Returns:
        The validated rules.

    Raises:
        ConfigError: the file cannot be read, or every problem found in it, one per line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{path}: cannot read the rules file: {exc}"
        raise ConfigError(msg) from exc
    return parse_rules(text, source=str(path))


def default_rules() -> RulesFile:
    """
    The rules shipped with churnwatch (`churnwatch/data/default.yaml`, a copy of
    `rules/default.yaml`).
    """
    text = resources.files("churnwatch").joinpath("data", "default.yaml").read_text("utf-8")
    return parse_rules(text, source="churnwatch/data/default.yaml")


def parse_rules(text: str, *, source: str = "<string>") -> RulesFile:
    """
    Validate the text of a rules file.

    Args:
        text: the YAML document.
        source: the file name used in error messages.

    Returns:
        The validated rules.

    Raises:
        ConfigError: every problem found, one per line, as `source:line: field: message`.
    """
    try:
        # the node tree keeps the line of every key and item; the data is what pydantic reads
        root = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a safe loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or "cannot parse"
        context = f" ({exc.context})" if exc.context else ""
        msg = f"{source}:{line}: invalid YAML: {problem}{context}"
        raise ConfigError(msg) from None
    except yaml.YAMLError as exc:
        msg = f"{source}:1: invalid YAML: {exc}"
        raise ConfigError(msg) from None

    issues = _duplicate_keys(root)
    rules: RulesFile | None = None
    if root is None:
        issues.append(((), "the file is empty; expected a mapping with version, segments, ..."))
    else:
        try:
            rules = RulesFile.model_validate(data)
        except ValidationError as exc:
            issues.extend(_from_pydantic(exc))
            issues.extend(_partial_cross_issues(data))
    if rules is not None and not issues:
        return rules
    lines: dict[str, int] = {}  # one line per issue, in file order, duplicates dropped
    for loc, message in issues:
        line = _line_of(root, loc)
        lines.setdefault(f"{source}:{line}: {_path(loc) or '(top level)'}: {message}", line)
    raise ConfigError("\n".join(sorted(lines, key=lines.__getitem__)))


_Loader: Final[type[yaml.SafeLoader] | type[yaml.CSafeLoader]] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)
"""libyaml's safe loader (ten times faster) where PyYAML was built with it."""


def _partial_cross_issues(data: object) -> list[Issue]:
    """
    The checks across sections, over the sections that validate on their own.
    """
    if not isinstance(data, dict):
        return []
    sections: dict[str, Any] = {}
    for name, adapter in _SECTIONS.items():
        if name not in data:
            field = RulesFile.model_fields[name]
            if not field.is_required():
                sections[name] = field.get_default(call_default_factory=True)
            continue
        try:
            sections[name] = adapter.validate_python(data[name])
        except ValidationError:
            continue  # its own errors are already reported
    return _cross_issues(sections)


_MESSAGES: Final[dict[str, str]] = {
    "missing": "field required",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
}


def _from_pydantic(exc: ValidationError) -> list[Issue]:
    issues: list[Issue] = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(error["loc"])
        kind = error["type"]
        ctx = error.get("ctx") or {}
        if kind == _ISSUES:
            issues.extend((loc + sub, message) for sub, message in ctx["issues"])
            continue
        if kind == "extra_forbidden":
            fields = _fields_at(loc[:-1])
            key = loc[-1]
            message = _unknown("key", key, fields) if fields else f"unknown key {_short(key)}"
        elif kind == "value_error":
            message = str(ctx.get("error", error["msg"]))
        elif kind == "missing":
            message = _MESSAGES[kind]
        else:
            message = _MESSAGES.get(kind) or _lower(error["msg"]).replace(
                "input should be", "must be"
            )
            if kind == "literal_error":
                options = tuple(re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
                close = difflib.get_close_matches(str(error["input"]), options, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                message = f"{message}, got {_short(error['input'])}{hint}"
            elif kind == "too_short":
                size = ctx.get("min_length", 1)
                message = f"must have at least {size} item{'s' if size != 1 else ''}"
                message = f"{message} (omit the key to match any), got {_short(error['input'])}"
            elif kind == "invalid_key":
                loc = loc[:-1]  # pydantic puts the key there, as an int for True and False
                message = (
                    f"key {_short(error['input'])} must be a string (YAML reads unquoted yes,"
                    " no, on and off as booleans: quote the key)"
                )
            elif kind == "string_type" and isinstance(error["input"], int | float):
                message = f"{message}, got {_short(error['input'])} (quote it)"
            else:
                message = f"{message}, got {_short(error['input'])}"
        issues.append((loc, message))
    return issues


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]


def _fields_at(loc: Loc) -> tuple[str, ...]:
    """
    The field names of the model found at `loc` of a `RulesFile`, or () when there is none.
    """
    current: Any = RulesFile
    for part in (*loc, None):
        while True:  # unwrap Annotated[...] and X | None
            origin = get_origin(current)
            if origin is Annotated:
                current = get_args(current)[0]
            elif origin is not None and type(None) in get_args(current):
                current = next(a for a in get_args(current) if a is not type(None))
            else:
                break
        if part is None:
            break
        if isinstance(current, type) and issubclass(current, BaseModel) and isinstance(part, str):
            field = current.model_fields.get(part)
            if field is None:
                return ()
            current = field.annotation
        elif get_origin(current) in (tuple, list) and isinstance(part, int):
            current = get_args(current)[0]
        elif get_origin(current) is dict and isinstance(part, str):
            current = get_args(current)[1]
        else:
            return ()
    if isinstance(current, type) and issubclass(current, BaseModel):
        return tuple(current.model_fields)
    return ()


def _line_of(root: yaml.Node | None, loc: Loc) -> int:
    """
    The 1-based line of the node at `loc`, or of its deepest existing parent.
    """
    if root is None:
        return 1
    node: yaml.Node = root
    line = root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            found = [
                (key, value)
                for key, value in node.value
                if isinstance(key, yaml.ScalarNode) and key.value == part
            ]
            if not found:
                break
            key, node = found[-1]  # the last of duplicate keys wins, as in the data
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


def _duplicate_keys(root: yaml.Node | None) -> list[Issue]:
    issues: list[Issue] = []
    seen_nodes: set[int] = set()

    def walk(node: yaml.Node, loc: Loc) -> None:
        if id(node) in seen_nodes:  # an alias to a node already checked
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                    line = key.start_mark.line + 1
                    if key.value in first:
                        msg = f"duplicate key {key.value!r} (first at line {first[key.value]})"
                        issues.append(((*loc, key.value), msg))
                    first.setdefault(key.value, line)
                    walk(value, (*loc, key.value))
                else:
                    walk(value, loc)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*loc, i))

    if root is not None:
        walk(root, ())
    return issues


# ---------------------------------------------------------------------------------------------
# The helpers


@dataclass(frozen=True, slots=True)
class PointHit:
    """
    One point rule that matched: its feature, its points and its label filled in.
    """

    feature: str
    points: float
    text: str
    value: float


@dataclass(frozen=True, slots=True)
class PriorResult:
    """
    The points-based prior of one customer.
    """

    score: float
    """clamp(base + points of every hit, 0, 100); higher is healthier."""
    churn_probability: float
    """1 - score / 100."""
    onboarding: bool
    """Whether the onboarding profile was used."""
    hits: tuple[PointHit, ...]


def segment_of(rules: RulesFile, ltv: float) -> str:
    """
    The first segment from the top whose `min_ltv` the lifetime value reaches.

    Args:
        rules: the rules.
        ltv: the customer's lifetime value; negative or NaN falls in the last segment.

    Returns:
        The segment's name.
    """
    for segment in rules.segments:
        if ltv >= segment.min_ltv:
            return segment.name
    return rules.segments[-1].name


def is_onboarding(rules: RulesFile, x: Mapping[str, float]) -> bool:
    """
    Whether the customer still has too little history for the regular prior.

    Args:
        rules: the rules.
        x: the feature vector; a missing `tenure_days` or `event_count` counts as 0.

    Returns:
        True while `tenure_days < max_tenure_days` or `event_count < min_events`.
    """
    profile = rules.onboarding
    return (
        x.get("tenure_days", 0.0) < profile.max_tenure_days
        or x.get("event_count", 0.0) < profile.min_events
    )


def prior_points(rules: RulesFile, x: Mapping[str, float], *, texts: bool = True) -> PriorResult:
    """
    The points-based health score, from the onboarding profile while `is_onboarding`.

    Args:
        rules: the rules.
        x: the feature vector; a point rule whose feature is missing (or NaN) does not match.
        texts: fill in the hits' labels (the per-event path, which does not show them, skips it).

    Returns:
        The score, the churn probability it implies, and the rules that matched.
    """
    onboarding = is_onboarding(rules, x)
    profile: Prior | Onboarding = rules.onboarding if onboarding else rules.prior
    total = profile.base
    hits: list[PointHit] = []
    for rule in profile.points:
        value = x.get(rule.feature)
        if value is None:
            continue
        # PointRule.matches inlined: this runs for every scored event
        above, below = rule.above, rule.below
        if (above is not None and value > above) or (below is not None and value < below):
            total += rule.points
            text = rule.text(value) if texts else ""
            hits.append(PointHit(rule.feature, rule.points, text, value))
    score = min(100.0, max(0.0, total))
    return PriorResult(score, (100.0 - score) / 100.0, onboarding, tuple(hits))


_Point = tuple[str, bool, float, float, float]
"""A point rule for the per-event path: feature, above (else below), threshold, points, and
the points as a share of the probability (`points / 100.0`)."""


@dataclass(frozen=True, slots=True)
class PriorPlan:
    """
    `prior_points` and `segment_of` for the per-event path: the rules read once into flat
    tuples, the same comparisons and the same arithmetic in the same order, no texts and no
    `PointHit`s. Build it once per rules file (`PriorPlan.build`).
    """

    max_tenure_days: float
    min_events: int
    onboarding_base: float
    onboarding_points: tuple[_Point, ...]
    base: float
    points: tuple[_Point, ...]
    segments: tuple[tuple[float, str], ...]
    """(min_ltv, name) from the top; the last is the catch-all."""

    @classmethod
    def build(cls, rules: RulesFile) -> PriorPlan:
        def flat(points: tuple[PointRule, ...]) -> tuple[_Point, ...]:
            return tuple(
                (
                    rule.feature,
                    rule.above is not None,
                    rule.threshold,
                    rule.points,
                    rule.points / 100.0,
                )
                for rule in points
            )

        onboarding = rules.onboarding
        return cls(
            max_tenure_days=onboarding.max_tenure_days,
            min_events=onboarding.min_events,
            onboarding_base=onboarding.base,
            onboarding_points=flat(onboarding.points),
            base=rules.prior.base,
            points=flat(rules.prior.points),
            segments=tuple((segment.min_ltv, segment.name) for segment in rules.segments),
        )

    def evaluate(self, x: Mapping[str, float]) -> tuple[float, bool, dict[str, float]]:
        """
        What `prior_points(rules, x, texts=False)` gives, in the form scoring uses.

        Returns:
            The churn probability, whether the onboarding profile was used, and the prior's
            share of the probability per feature: `-points / 100` summed over the feature's
            matched rules, in the order they matched.
        """
        onboarding = (
            x.get("tenure_days", 0.0) < self.max_tenure_days
            or x.get("event_count", 0.0) < self.min_events
        )
        if onboarding:
            total, points = self.onboarding_base, self.onboarding_points
        else:
            total, points = self.base, self.points
        factors: dict[str, float] = {}
        get = x.get
        for feature, above, threshold, value_points, share in points:
            value = get(feature)
            if value is None:
                continue
            if value > threshold if above else value < threshold:
                total += value_points
                factors[feature] = factors.get(feature, 0.0) - share
        score = min(100.0, max(0.0, total))
        return (100.0 - score) / 100.0, onboarding, factors

    def churn_probability(self, x: Mapping[str, float]) -> float:
        """`prior_points(rules, x).churn_probability`: `evaluate`'s probability."""
        return self.evaluate(x)[0]

    def segment_of(self, ltv: float) -> str:
        """`segment_of(rules, ltv)`."""
        for min_ltv, name in self.segments:
            if ltv >= min_ltv:
                return name
        return self.segments[-1][1]


def route(rules: RulesFile, *, segment: str, severity: str, rule: str) -> Action:
    """
    The action of the first route that matches the alert.

    Args:
        rules: the rules; validation guarantees the last route matches everything.
        segment: the customer's segment.
        severity: the alert's severity.
        rule: the name of the rule that fired.

    Returns:
        `email` or `csm_task`.
    """
    for item in rules.routing:
        if item.when.matches(segment=segment, severity=severity, rule=rule):
            return item.action
    msg = f"no route matches segment {segment!r}, severity {severity!r}, rule {rule!r}"
    raise ConfigError(msg)


def rules_fingerprint(rules: RulesFile) -> str:
    """
    The version plus a short hash of the validated content, e.g. `2026.11.1+3f2a9c1b`.

    Comments, formatting and key order do not change it; any value does, so alerts from an
    edited file whose version was not bumped can still be told apart. Compute it once per load.
    """
    data = rules.model_dump(mode="json")
    if rules.labels is None:
        del data["labels"]  # files without the section keep the fingerprint they always had
    if rules.model is None:
        del data["model"]
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8]
    return f"{rules.version}+{digest}"
