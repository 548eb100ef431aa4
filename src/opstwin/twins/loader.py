"""Reading and validating twin files.

:func:`parse_twin_document` is the one way a twin model enters the system (file, CLI or
``PUT /twins/{id}``). It reports every problem it finds at once, each as a
:class:`~opstwin.kit.errors.FieldError` whose pointer names the offending field
(``/twins/0/assets/2/metrics/temp_c/hard_limits``): first the shape (pydantic), then,
when the shape is right, everything that needs the whole document.
"""

from __future__ import annotations

import ast
import json
import keyword
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError as PydanticValidationError

from opstwin.kit.errors import FieldError, ValidationFailed
from opstwin.twins.model import (
    EXPRESSION_FUNCTIONS,
    UNION_LABELS,
    AssetSpec,
    Bounds,
    MetricInput,
    MetricSpec,
    SearchRange,
    SetpointInput,
    TwinDocument,
    TwinSpec,
)

YAML_SUFFIXES = frozenset({".yaml", ".yml"})
JSON_SUFFIXES = frozenset({".json"})

# Python keywords cannot be names in an expression, and NAME_PATTERN admits some of them
# (``if``, ``and``...), so they are refused as input and output names.
PYTHON_KEYWORDS = frozenset(keyword.kwlist)

_COLLECTION_NOUNS = {
    "products": "product",
    "processes": "process",
    "assets": "asset",
    "process_models": "process model",
    "playbooks": "playbook",
}


def load_twin_file(path: str | Path) -> TwinDocument:
    """Read a twin file (``.yaml``/``.yml`` or ``.json``) and validate it.

    Raises :class:`ValidationFailed` for content problems (syntax, shape, references);
    ``OSError`` when the file cannot be read.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in YAML_SUFFIXES | JSON_SUFFIXES:
        raise ValidationFailed(
            f"{path.name}: unsupported twin file type {suffix or '(none)'}; "
            "use .yaml, .yml or .json"
        )
    text = path.read_text(encoding="utf-8")
    obj = _parse_yaml(text, path.name) if suffix in YAML_SUFFIXES else _parse_json(text, path.name)
    return parse_twin_document(obj)


def parse_twin_document(obj: object) -> TwinDocument:
    """Validate a decoded twin document (dicts and lists) into a :class:`TwinDocument`."""
    try:
        document = TwinDocument.model_validate(obj)
    except PydanticValidationError as exc:
        errors = [_field_error(err, obj) for err in exc.errors(include_url=False)]
        raise ValidationFailed(_summary(errors), errors=errors) from None
    errors = check_twin_document(document)
    if errors:
        raise ValidationFailed(_summary(errors), errors=errors)
    return document


def check_twin_document(document: TwinDocument) -> list[FieldError]:
    """Everything pydantic cannot see from one object: ids, references, expressions, ranges."""
    errors: list[FieldError] = []
    errors += _duplicates(((t.id, f"/twins/{i}/id") for i, t in enumerate(document.twins)), "twin")
    for index, twin in enumerate(document.twins):
        errors += _check_twin(twin, f"/twins/{index}")
    return errors


# --- whole-document checks -----------------------------------------------------------------


def _check_twin(twin: TwinSpec, base: str) -> list[FieldError]:
    errors: list[FieldError] = []
    collections: tuple[tuple[str, list[Any]], ...] = (
        ("products", twin.products),
        ("processes", twin.processes),
        ("assets", twin.assets),
        ("process_models", twin.process_models),
        ("playbooks", twin.playbooks),
    )
    for collection, items in collections:
        pairs = ((item.id, f"{base}/{collection}/{i}/id") for i, item in enumerate(items))
        errors += _duplicates(pairs, _COLLECTION_NOUNS[collection])

    products = {p.id for p in twin.products}
    processes = {p.id for p in twin.processes}
    assets = {a.id: a for a in twin.assets}
    models = {m.id: m for m in twin.process_models}

    for i, process in enumerate(twin.processes):
        for j, product in enumerate(process.products):
            if product not in products:
                errors.append(_unknown("product", product, f"{base}/processes/{i}/products/{j}"))

    if twin.anomaly_defaults is not None:
        errors += _check_thresholds(twin, None, f"{base}/anomaly_defaults")

    for i, asset in enumerate(twin.assets):
        at = f"{base}/assets/{i}"
        if asset.process is not None and asset.process not in processes:
            errors.append(_unknown("process", asset.process, f"{at}/process"))
        for j, product in enumerate(asset.products):
            if product not in products:
                errors.append(_unknown("product", product, f"{at}/products/{j}"))
        errors += _check_metrics(twin, asset, at)
        errors += _check_setpoints(asset, at)

    for i, model in enumerate(twin.process_models):
        at = f"{base}/process_models/{i}"
        if model.process is not None and model.process not in processes:
            errors.append(_unknown("process", model.process, f"{at}/process"))
        for name, source in model.inputs.items():
            if name in EXPRESSION_FUNCTIONS or name in PYTHON_KEYWORDS:
                errors.append(
                    FieldError(
                        f"input name {name!r} is reserved (an expression function or keyword)",
                        pointer=f"{at}/inputs/{name}",
                    )
                )
            if isinstance(source, MetricInput | SetpointInput):
                errors += _check_input_reference(source, assets, f"{at}/inputs/{name}")
        for name, kpi in model.outputs.items():
            if name in model.inputs or name in PYTHON_KEYWORDS or name in EXPRESSION_FUNCTIONS:
                errors.append(
                    FieldError(
                        f"output name {name!r} clashes with an input, a function or a keyword",
                        pointer=f"{at}/outputs/{name}",
                    )
                )
            errors += _check_expression(
                kpi.expression, set(model.inputs), f"{at}/outputs/{name}/expression"
            )

    # Models whose inputs are broken already have their errors; the playbooks they judge are
    # not checked against them a second time.
    broken_models = {
        pm.id
        for k, pm in enumerate(twin.process_models)
        if any((e.pointer or "").startswith(f"{base}/process_models/{k}/") for e in errors)
    }
    for i, playbook in enumerate(twin.playbooks):
        at = f"{base}/playbooks/{i}"
        home = assets.get(playbook.asset)
        if home is None:
            errors.append(_unknown("asset", playbook.asset, f"{at}/asset"))
        elif playbook.metric not in home.metrics:
            errors.append(_unknown("metric", playbook.metric, f"{at}/metric", f"asset {home.id!r}"))
        if len(set(playbook.kinds)) != len(playbook.kinds):
            errors.append(
                FieldError("anomaly kinds are listed more than once", pointer=f"{at}/kinds")
            )
        for j, action in enumerate(playbook.actions):
            act_at = f"{at}/actions/{j}"
            target_id = action.asset or playbook.asset
            target = assets.get(target_id)
            if target is None:
                if action.asset is not None:  # an unknown playbook asset is reported once, above
                    errors.append(_unknown("asset", target_id, f"{act_at}/asset"))
                continue
            setpoint = target.setpoints.get(action.setpoint)
            if setpoint is None:
                errors.append(
                    _unknown(
                        "setpoint", action.setpoint, f"{act_at}/setpoint", f"asset {target.id!r}"
                    )
                )
                continue
            errors += _check_action_values(
                action.candidates, action.search, setpoint.bounds, act_at
            )
            judge = models.get(playbook.objective.process_model) if playbook.objective else None
            if (
                judge is not None
                and judge.id not in broken_models
                and not any(
                    isinstance(src, SetpointInput)
                    and src.asset == target.id
                    and src.setpoint == action.setpoint
                    for src in judge.inputs.values()
                )
            ):
                errors.append(
                    FieldError(
                        f"process model {judge.id!r} (the playbook's objective) does not take "
                        f"setpoint {target.id}/{action.setpoint} as an input, so no candidate "
                        "value could change its KPI: add the setpoint to the model's inputs, or "
                        "judge the playbook by a model that takes it",
                        pointer=f"{act_at}/setpoint",
                    )
                )
        if playbook.objective is not None:
            objective = playbook.objective
            judged_by = models.get(objective.process_model)
            if judged_by is None:
                errors.append(
                    _unknown(
                        "process model", objective.process_model, f"{at}/objective/process_model"
                    )
                )
            elif objective.kpi not in judged_by.outputs:
                errors.append(
                    _unknown(
                        "KPI",
                        objective.kpi,
                        f"{at}/objective/kpi",
                        f"process model {judged_by.id!r}",
                    )
                )
    return errors


def _check_metrics(twin: TwinSpec, asset: AssetSpec, at: str) -> list[FieldError]:
    errors: list[FieldError] = []
    names: dict[str, str] = {metric_id: metric_id for metric_id in asset.metrics}
    for metric_id, metric in asset.metrics.items():
        mat = f"{at}/metrics/{_escape(metric_id)}"
        if (
            metric.normal_range
            and metric.hard_limits
            and not metric.hard_limits.contains_range(metric.normal_range)
        ):
            errors.append(
                FieldError(
                    f"hard limits {metric.hard_limits.describe()} must contain the normal range "
                    f"{metric.normal_range.describe()}",
                    pointer=f"{mat}/hard_limits",
                )
            )
        for j, alias in enumerate(metric.aliases):
            owner = names.get(alias)
            if owner is not None:
                errors.append(
                    FieldError(
                        f"alias {alias!r} is already used by metric {owner!r} of this asset",
                        pointer=f"{mat}/aliases/{j}",
                    )
                )
            else:
                names[alias] = metric_id
        if metric.anomaly is not None:
            errors += _check_thresholds(twin, metric, f"{mat}/anomaly")
    return errors


def _check_thresholds(twin: TwinSpec, metric: MetricSpec | None, at: str) -> list[FieldError]:
    """Settings that only make sense together are checked after merging the layers."""
    thresholds = twin.anomaly_thresholds(metric)
    if thresholds.z_clear >= thresholds.z_threshold:
        return [
            FieldError(
                f"z_clear ({thresholds.z_clear:g}) must be below z_threshold "
                f"({thresholds.z_threshold:g}) for hysteresis",
                pointer=f"{at}/z_clear",
            )
        ]
    return []


def _check_setpoints(asset: AssetSpec, at: str) -> list[FieldError]:
    errors: list[FieldError] = []
    for setpoint_id, setpoint in asset.setpoints.items():
        sat = f"{at}/setpoints/{_escape(setpoint_id)}"
        if setpoint.metric is not None and setpoint.metric not in asset.metrics:
            errors.append(
                _unknown("metric", setpoint.metric, f"{sat}/metric", f"asset {asset.id!r}")
            )
        for field in ("default", "current"):
            value = getattr(setpoint, field)
            if value is not None and not setpoint.bounds.contains(value):
                errors.append(
                    FieldError(
                        f"{field} {value:g} is outside the bounds "
                        f"[{setpoint.bounds.low:g}, {setpoint.bounds.high:g}]",
                        pointer=f"{sat}/{field}",
                    )
                )
        width = setpoint.bounds.high - setpoint.bounds.low
        if setpoint.max_step > width:
            errors.append(
                FieldError(
                    f"max_step {setpoint.max_step:g} is wider than the bounds ({width:g})",
                    pointer=f"{sat}/max_step",
                )
            )
    return errors


def _check_input_reference(
    source: MetricInput | SetpointInput, assets: dict[str, AssetSpec], at: str
) -> list[FieldError]:
    asset = assets.get(source.asset)
    if asset is None:
        return [_unknown("asset", source.asset, f"{at}/asset")]
    if isinstance(source, MetricInput):
        if source.metric not in asset.metrics:
            return [_unknown("metric", source.metric, f"{at}/metric", f"asset {asset.id!r}")]
        if source.minus_setpoint is not None and source.minus_setpoint not in asset.setpoints:
            return [
                _unknown(
                    "setpoint",
                    source.minus_setpoint,
                    f"{at}/minus_setpoint",
                    f"asset {asset.id!r}",
                )
            ]
    elif source.setpoint not in asset.setpoints:
        return [_unknown("setpoint", source.setpoint, f"{at}/setpoint", f"asset {asset.id!r}")]
    return []


def _check_expression(expression: str, inputs: set[str], at: str) -> list[FieldError]:
    """Syntax and names only: ``ast.parse`` builds a tree and never runs anything. What the
    expression may *do* is decided by the expression engine that evaluates it."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        return [FieldError(f"not a valid expression{where}: {exc.msg}", pointer=at)]
    allowed = inputs | EXPRESSION_FUNCTIONS
    unknown = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - allowed)
    if unknown:
        return [
            FieldError(
                f"unknown name(s) {', '.join(unknown)}: an expression may use the model's inputs "
                f"({', '.join(sorted(inputs))}) and {', '.join(sorted(EXPRESSION_FUNCTIONS))}",
                pointer=at,
            )
        ]
    return []


def _check_action_values(
    candidates: list[float] | None, search: SearchRange | None, bounds: Bounds, at: str
) -> list[FieldError]:
    errors: list[FieldError] = []
    span = f"[{bounds.low:g}, {bounds.high:g}]"
    for k, value in enumerate(candidates or []):
        if not bounds.contains(value):
            errors.append(
                FieldError(
                    f"candidate {value:g} is outside the setpoint bounds {span}",
                    pointer=f"{at}/candidates/{k}",
                )
            )
    if search is not None:
        for end in ("low", "high"):
            value = getattr(search, end)
            if not bounds.contains(value):
                errors.append(
                    FieldError(
                        f"search {end} {value:g} is outside the setpoint bounds {span}",
                        pointer=f"{at}/search/{end}",
                    )
                )
    return errors


def _duplicates(pairs: Iterable[tuple[str, str]], what: str) -> list[FieldError]:
    seen: set[str] = set()
    errors: list[FieldError] = []
    for value, pointer in pairs:
        if value in seen:
            errors.append(FieldError(f"duplicate {what} id {value!r}", pointer=pointer))
        seen.add(value)
    return errors


def _unknown(what: str, value: str, pointer: str, owner: str | None = None) -> FieldError:
    if owner is None:
        return FieldError(f"unknown {what} {value!r}", pointer=pointer)
    return FieldError(f"{owner} has no {what} {value!r}", pointer=pointer)


# --- decoding and error locations ------------------------------------------------------------


def _field_error(err: Any, document: object) -> FieldError:
    message = str(err["msg"]).removeprefix("Value error, ")
    loc = tuple(err["loc"])
    if "[key]" in loc:
        message = f"invalid key: {message}"
    if err["type"] == "union_tag_invalid":
        # An unknown ``dist``/``method``: point at that key, not at the object holding it.
        loc += (str(err["ctx"]["discriminator"]).strip("'"),)
    return FieldError(message, pointer=_pointer(loc, document))


def _pointer(loc: Iterable[int | str], document: object) -> str:
    """Turn a pydantic error location into a JSON pointer into the *input* document.

    Walks the input alongside the location so that union labels pydantic inserts
    (``distribution``, ``normal``...) and the ``[key]`` marker are left out, while a
    missing or unexpected key is kept as the last step.
    """
    parts: list[str] = []
    node: object = document
    for step in loc:
        if isinstance(node, dict) and step in node:
            child: object = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            child = node[step]
        elif step == "[key]" or step in UNION_LABELS:
            continue
        else:
            child = None  # a missing or unexpected key: point at it, nothing below
        parts.append(str(step))
        node = child
    return "".join("/" + _escape(p) for p in parts)


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _summary(errors: list[FieldError]) -> str:
    count = len(errors)
    return f"twin model is invalid: {count} error{'s' if count != 1 else ''}"


class _StrictYamlLoader(yaml.SafeLoader):
    """Safe YAML loader that refuses duplicate keys (PyYAML keeps the last one silently, which
    would drop a metric or a setpoint without a word)."""


def _construct_mapping(loader: _StrictYamlLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    # Only the node's own keys are compared: keys brought in by a merge (``<<: *anchor``) may
    # be overridden, that is what merges are for.
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key; construct_mapping reports it properly
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictYamlLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _parse_yaml(text: str, name: str) -> object:
    try:
        return yaml.load(text, Loader=_StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        detail = str(exc).replace("\n", " ")
        raise ValidationFailed(
            f"{name} is not valid YAML", errors=[FieldError(detail, pointer="")]
        ) from None


def _parse_json(text: str, name: str) -> object:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    def no_constants(token: str) -> None:
        raise ValueError(f"{token} is not a number in JSON")

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError too
        raise ValidationFailed(
            f"{name} is not valid JSON", errors=[FieldError(str(exc), pointer="")]
        ) from None


__all__ = ["check_twin_document", "load_twin_file", "parse_twin_document"]
