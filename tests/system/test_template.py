"""The SAM template's defaults deploy on a new AWS account: no reserved concurrency unless
asked for (Lambda keeps 10 or 100 executions unreserved, and a new account may have a
limit of 10), and the opt-in reserves exactly what it says."""

from pathlib import Path

from cfnlint.decode import decode_str

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "template.yaml"


def load():
    template, matches = decode_str(TEMPLATE.read_text())
    assert not matches, matches
    return template


def evaluate(node, params, conditions):
    """Resolves the intrinsic functions a condition or an Fn::If can hold."""
    if isinstance(node, dict) and len(node) == 1:
        (name, arg), = node.items()
        if name == "Ref":
            return params.get(arg, {"Ref": arg})
        if name == "Condition":
            return evaluate(conditions[arg], params, conditions)
        if name == "Fn::Equals":
            a, b = (evaluate(x, params, conditions) for x in arg)
            return str(a) == str(b)
        if name == "Fn::Not":
            return not evaluate(arg[0], params, conditions)
        if name == "Fn::Or":
            return any(evaluate(x, params, conditions) for x in arg)
        if name == "Fn::And":
            return all(evaluate(x, params, conditions) for x in arg)
        if name == "Fn::If":
            cond, then, otherwise = arg
            chosen = then if evaluate(conditions[cond], params, conditions) else otherwise
            return evaluate(chosen, params, conditions)
    return node


def reserved_concurrency(template, **overrides):
    """What each function's ReservedConcurrentExecutions resolves to (None: not set)."""
    params = {name: p.get("Default") for name, p in template["Parameters"].items()}
    params.update(overrides)
    conditions = template.get("Conditions", {})
    globals_ = template.get("Globals", {}).get("Function", {})
    resolved = {}
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        value = resource["Properties"].get(
            "ReservedConcurrentExecutions", globals_.get("ReservedConcurrentExecutions"))
        value = evaluate(value, params, conditions)
        resolved[name] = None if value in (None, {"Ref": "AWS::NoValue"}) else int(value)
    assert len(resolved) == 7
    return resolved


def test_the_default_deploy_reserves_no_concurrency():
    assert set(reserved_concurrency(load()).values()) == {None}


def test_zero_or_empty_reserve_nothing_and_a_number_reserves_that_many():
    template = load()
    for off in ("", "0"):
        assert set(reserved_concurrency(template, ReservedConcurrencyPerFunction=off).values()) == {None}
    assert set(reserved_concurrency(template, ReservedConcurrencyPerFunction="5").values()) == {5}
