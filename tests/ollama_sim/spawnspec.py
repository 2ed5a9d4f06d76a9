"""Pure functions that turn a generation's tables into a child's argv and environment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tests.ollama_sim.gens import EnvRule, Generation

Values = Mapping[str, "str | Sequence[str]"]


def expand_argv(tokens: Sequence[str], values: Values) -> list[str]:
    """Fill an argv template: "{x}" is one value, "{x*}" splices a list (possibly empty), anything else is literal."""
    out: list[str] = []
    for tok in tokens:
        if tok.startswith("{") and tok.endswith("*}"):
            out.extend(values[tok[1:-2]])
        elif tok.startswith("{") and tok.endswith("}"):
            v = values[tok[1:-1]]
            out.append(v if isinstance(v, str) else ",".join(v))
        else:
            out.append(tok)
    return out


def _joined(rule: EnvRule, values: Values) -> list[str]:
    parts: list[str] = []
    for name in rule.parts:
        v = values.get(name, "")
        parts.extend([v] if isinstance(v, str) else list(v))
    return [p for p in parts if p]


def apply_env(rules: Sequence[EnvRule], base: Mapping[str, str], values: Values,
              conditions: frozenset[str]) -> dict[str, str]:
    """The child's environment: a full copy of `base` (LD_PRELOAD and all) with the rules that apply rewritten."""
    env = dict(base)
    for rule in rules:
        if rule.when != "always" and rule.when not in conditions:
            continue
        new = _joined(rule, values)
        if rule.op == "set":
            if new:
                env[rule.key] = ":".join(new)
            continue
        old = [p for p in env.get(rule.key, "").split(":") if p]
        merged = new + old if rule.op == "prepend" else old + new
        if rule.dedupe:
            merged = list(dict.fromkeys(merged))
        if merged:
            env[rule.key] = ":".join(merged)
    return env


def spawn(gen: Generation, kind: str, base: Mapping[str, str], values: Values,
          conditions: frozenset[str] = frozenset()) -> tuple[list[str], dict[str, str]]:
    """argv and environment for one child of `kind` in generation `gen`."""
    return expand_argv(gen.argv[kind], values), apply_env(gen.env[kind], base, values, conditions)
