"""The SAM templates. The default one deploys on a new AWS account: no reserved concurrency
unless asked for (Lambda keeps 10 or 100 executions unreserved, and a new account may have
a limit of 10), and the opt-in reserves exactly what it says. The managed-instances one
(generated from it) puts every function on its capacity provider and changes nothing
else; the default one has none of that."""

import copy
import functools
import json
import re
from pathlib import Path

import pytest
from cfnlint.decode import decode_str

INFRA = Path(__file__).resolve().parents[2] / "infra"
TEMPLATE = INFRA / "template.yaml"
MANAGED = INFRA / "managed-instances.yaml"


def load(path=TEMPLATE):
    template, matches = decode_str(path.read_text())
    assert not matches, matches
    return template


@functools.cache
def transformed(path):
    """The CloudFormation template that the SAM transform (samtranslator, as CloudFormation
    runs it on deploy) makes of `path`, offline: CodeUri as `sam package` leaves it after
    `sam build`, the region fixed."""
    import boto3
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator
    from samtranslator.yaml_helper import yaml_parse

    template = yaml_parse(path.read_text())
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://bucket/function.zip"
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name="us-east-1"))
    return translator.translate(template, parameter_values={}, get_managed_policy_map=lambda: {})


def of_type(template, type_):
    return {name: r for name, r in template["Resources"].items() if r["Type"] == type_}


def functions(path):
    found = of_type(transformed(path), "AWS::Lambda::Function")
    assert len(found) == 7, sorted(found)
    return found


def refers_to(value, resource):
    """Whether an ARN value is `resource`'s: a GetAtt of its Arn, or a Sub of the ARN
    around its Ref (its name)."""
    if value == {"Fn::GetAtt": [resource, "Arn"]}:
        return True
    sub = value.get("Fn::Sub") if isinstance(value, dict) else None
    return isinstance(sub, str) and sub.endswith(":capacity-provider:${%s}" % resource)


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


def test_no_value_the_parameter_accepts_reserves_zero_executions():
    """Reserving 0 stops every function: a value the pattern lets through is off or >= 1."""
    template = load()
    pattern = re.compile(template["Parameters"]["ReservedConcurrencyPerFunction"]["AllowedPattern"])
    accepted = [v for v in ("", "0", "00", "000", "007", "5", "10") if pattern.fullmatch(v)]
    assert "" in accepted and "0" in accepted and "5" in accepted
    for value in accepted:
        reserved = set(reserved_concurrency(template, ReservedConcurrencyPerFunction=value).values())
        assert reserved == {None} or min(reserved) >= 1, value


# The managed-instances template (infra/managed-instances.yaml), checked on what the SAM
# transform makes of it: the AWS::Lambda::Function resources CloudFormation creates.

MANAGED_ONLY = ("CapacityProviderConfig", "FunctionScalingConfig", "PublishToLatestPublished")


def test_every_managed_function_runs_on_the_capacity_provider():
    providers = of_type(transformed(MANAGED), "AWS::Lambda::CapacityProvider")
    assert list(providers) == ["CapacityProvider"]
    for name, function in functions(MANAGED).items():
        properties = function["Properties"]
        config = properties["CapacityProviderConfig"]["LambdaManagedInstancesCapacityProviderConfig"]
        assert refers_to(config["CapacityProviderArn"], "CapacityProvider"), (name, config)
        assert config["PerExecutionEnvironmentMaxConcurrency"] == {"Ref": "PerExecutionEnvironmentMaxConcurrency"}
        assert properties["FunctionScalingConfig"] == {
            "MinExecutionEnvironments": {"Ref": "MinExecutionEnvironments"},
            "MaxExecutionEnvironments": {"Ref": "MaxExecutionEnvironments"},
        }, name
        # API Gateway invokes the unqualified function: $LATEST.PUBLISHED, republished on
        # every update only with this.
        assert properties["PublishToLatestPublished"] is True, name
        # Lambda Managed Instances' smallest function is 2 GB; no reserved concurrency
        # (FunctionScalingConfig bounds it) and no function-level VPC (the capacity
        # provider's network is theirs).
        assert properties["MemorySize"] >= 2048, name
        assert "ReservedConcurrentExecutions" not in properties, name
        assert "VpcConfig" not in properties, name


def db_pool_sizes(path, **overrides):
    """What each function's DB_POOL_SIZE resolves to (None: not set)."""
    template = transformed(path)
    params = {name: p.get("Default") for name, p in template["Parameters"].items()}
    params.update(overrides)
    resolved = {}
    for name, function in functions(path).items():
        value = function["Properties"]["Environment"]["Variables"].get("DB_POOL_SIZE")
        value = evaluate(value, params, template.get("Conditions", {}))
        resolved[name] = None if value in (None, {"Ref": "AWS::NoValue"}) else value
    return resolved


def test_no_managed_function_pins_its_pool_to_one_connection():
    """The pool follows AWS_LAMBDA_MAX_CONCURRENCY, the concurrency each environment serves,
    unless DbPoolSize asks for fewer; there is no reserved concurrency to set."""
    assert set(db_pool_sizes(MANAGED).values()) == {None}
    assert set(db_pool_sizes(MANAGED, DbPoolSize="8").values()) == {"8"}
    assert set(db_pool_sizes(TEMPLATE).values()) == {"1"}
    assert "ReservedConcurrencyPerFunction" not in load(MANAGED)["Parameters"]


def test_the_capacity_provider_runs_the_functions_architecture_in_the_given_network():
    provider = of_type(transformed(MANAGED), "AWS::Lambda::CapacityProvider")["CapacityProvider"]["Properties"]
    architectures = {tuple(f["Properties"]["Architectures"]) for f in functions(MANAGED).values()}
    assert architectures == {("arm64",)}
    assert provider["InstanceRequirements"]["Architectures"] == ["arm64"]
    assert provider["VpcConfig"] == {
        "SubnetIds": {"Ref": "SubnetIds"},
        "SecurityGroupIds": {"Ref": "SecurityGroupIds"},
    }
    role = provider["PermissionsConfig"]["CapacityProviderOperatorRoleArn"]["Fn::GetAtt"][0]
    assert transformed(MANAGED)["Resources"][role]["Properties"]["ManagedPolicyArns"] == [
        "arn:aws:iam::aws:policy/AWSLambdaManagedEC2ResourceOperator"
    ]
    parameters = load(MANAGED)["Parameters"]
    assert "Default" not in parameters["SubnetIds"] and "Default" not in parameters["SecurityGroupIds"]


def test_the_default_deploy_has_no_managed_instances():
    assert not of_type(transformed(TEMPLATE), "AWS::Lambda::CapacityProvider")
    for name, function in functions(TEMPLATE).items():
        properties = function["Properties"]
        assert not set(MANAGED_ONLY) & set(properties), name


def test_the_managed_template_changes_nothing_else():
    """Resource by resource, the managed stack is the default one plus the capacity provider
    and its operator role; its functions differ only in what puts them on it."""
    default, managed = transformed(TEMPLATE)["Resources"], transformed(MANAGED)["Resources"]
    assert set(managed) - set(default) == {"CapacityProvider", "CapacityProviderOperatorRole"}
    assert set(default) <= set(managed)
    for name, resource in default.items():
        resource, other = copy.deepcopy(resource), copy.deepcopy(managed[name])
        if resource["Type"] == "AWS::Lambda::Function":
            for properties in (resource["Properties"], other["Properties"]):
                for key in (*MANAGED_ONLY, "MemorySize", "ReservedConcurrentExecutions"):
                    properties.pop(key, None)
                properties["Environment"]["Variables"].pop("DB_POOL_SIZE", None)
        assert resource == other, name


@pytest.mark.parametrize("path", [TEMPLATE, MANAGED], ids=["default", "managed"])
def test_each_function_is_built_from_its_own_crate(path):
    """`sam build` runs `cargo lambda build --bin <Binary>` in CodeUri. In the workspace root,
    Cargo would select every member and build the functions with the server's, the tests'
    and the benchmarks' features too; in the function's crate, with its own only."""
    template = load(path)
    built = {}
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        assert resource["Metadata"]["BuildMethod"] == "rust-cargolambda", name
        binary = resource["Metadata"]["BuildProperties"]["Binary"]
        code = resource["Properties"].get("CodeUri", template["Globals"]["Function"].get("CodeUri"))
        assert code == f"../functions/{binary}", name
        assert (path.parent / code / "Cargo.toml").is_file(), code
        built[name] = binary
    assert len(set(built.values())) == 7, built


@pytest.mark.parametrize("path", [TEMPLATE, MANAGED], ids=["default", "managed"])
def test_a_secrets_kms_key_is_usable_through_secrets_manager_only(path):
    """With SecretsKmsKeyArn (secrets encrypted with a key of one's own), each function's role
    may decrypt with that key, only through Secrets Manager; without it, no KMS permission."""
    template = transformed(path)
    conditions = template.get("Conditions", {})
    defaults = {name: p.get("Default") for name, p in template["Parameters"].items()}
    key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    pattern = re.compile(load(path)["Parameters"]["SecretsKmsKeyArn"]["AllowedPattern"])
    assert pattern.fullmatch(key) and pattern.fullmatch("")
    for other in ("arn:aws:kms:eu-west-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab",
                  "arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"):
        assert pattern.fullmatch(other), other
    assert not pattern.fullmatch("alias/aws/secretsmanager")
    roles = of_type(template, "AWS::IAM::Role")
    for name, function in functions(path).items():
        role = roles[function["Properties"]["Role"]["Fn::GetAtt"][0]]
        for value in ("", key):
            params = {**defaults, "SecretsKmsKeyArn": value}
            statements = []
            for policy in role["Properties"].get("Policies", []):
                policy = evaluate(policy, params, conditions)
                if policy != {"Ref": "AWS::NoValue"}:
                    statements += policy["PolicyDocument"]["Statement"]
            kms = [st for st in statements if "kms:" in json.dumps(st["Action"])]
            if not value:
                assert kms == [], name
                continue
            assert len(kms) == 1, name
            assert kms[0]["Action"] in ("kms:Decrypt", ["kms:Decrypt"]), name
            assert evaluate(kms[0]["Resource"], params, conditions) == key, name
            assert kms[0]["Condition"] == {"StringEquals": {
                "kms:ViaService": {"Fn::Sub": "secretsmanager.${AWS::Region}.amazonaws.com"}}}, name


def test_secret_arns_must_be_full():
    # SAM's GetSecretValue policy names the ARN exactly: a partial ARN (without the -XXXXXX
    # suffix Secrets Manager adds) would deploy, then be refused at every cold start.
    parameters = load()["Parameters"]
    full = "arn:aws:secretsmanager:us-east-1:123456789012:secret:todo-api/database-url-AbC12z"
    partial = "arn:aws:secretsmanager:us-east-1:123456789012:secret:todo-api/database-url"
    for name in ("DatabaseUrlSecretArn", "BetterAuthSecretArn"):
        pattern = parameters[name]["AllowedPattern"]
        assert re.fullmatch(pattern, full), name
        assert not re.fullmatch(pattern, partial), name
    assert re.fullmatch(parameters["BetterAuthSecretArn"]["AllowedPattern"], "")
    assert not re.fullmatch(parameters["DatabaseUrlSecretArn"]["AllowedPattern"], "")


def test_api_gateway_answers_preflights_and_sends_the_rest_to_a_function():
    """After the SAM transform: no route takes OPTIONS (nor ANY, nor $default), so API
    Gateway answers every CORS preflight itself; every other method, on every path, has a
    route (the table's, or a fallback route to the health function, which answers 404 or
    405 with a JSON detail), so API Gateway never answers {"message":"Not Found"}."""
    methods = {"get", "head", "post", "put", "patch", "delete"}
    for path in (TEMPLATE, MANAGED):
        resources = transformed(path)["Resources"]
        [api] = [r for r in resources.values() if r["Type"] == "AWS::ApiGatewayV2::Api"]
        paths = api["Properties"]["Body"]["paths"]
        assert "$default" not in paths, path.name
        for route, item in paths.items():
            assert set(item) <= methods, (path.name, route, sorted(item))
        for fallback in ("/", "/{proxy+}"):
            assert set(paths[fallback]) == methods, (path.name, fallback)
            for operation in paths[fallback].values():
                uri = str(operation["x-amazon-apigateway-integration"]["uri"])
                assert "${HealthFunction.Arn}" in uri, (path.name, fallback, uri)


def test_api_gateway_logs_every_request_it_answers_itself():
    """API Gateway's own answers (its throttling, a Lambda invocation that failed or was
    throttled) reach no function's log: the stage's access log records them, one JSON line
    per request, into a group with the functions' retention, and never a header."""
    for path in (TEMPLATE, MANAGED):
        resources = transformed(path)["Resources"]
        (stage,) = of_type(transformed(path), "AWS::ApiGatewayV2::Stage").values()
        settings = stage["Properties"]["AccessLogSettings"]
        (group,) = settings["DestinationArn"]["Fn::GetAtt"][:1]
        assert settings["DestinationArn"] == {"Fn::GetAtt": [group, "Arn"]}, settings
        log_group = resources[group]
        assert log_group["Type"] == "AWS::Logs::LogGroup"
        assert log_group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionInDays"}
        assert log_group["DeletionPolicy"] == "Delete"
        line = settings["Format"]
        assert "\n" not in line, "one line per request"
        # Every $context variable stands inside a JSON string, so any value keeps it JSON.
        record = json.loads(re.sub(r"\$context\.[A-Za-z.]+", "x", line))
        assert {"requestId", "lambdaRequestId", "status", "integrationStatus",
                "integrationError"} <= set(record), record
        assert "$context.integrationErrorMessage" in line
        assert "$context.integration.requestId" in line
        assert "header" not in line.lower() and "authorization" not in line.lower()


@pytest.mark.parametrize("path", [TEMPLATE, MANAGED], ids=lambda p: p.name)
def test_the_cors_origins_have_no_default(path):
    """A deploy must name the frontend's origin: with a default (it was localhost:3000), a
    stack answered curl and refused every browser on the real origin."""
    assert "Default" not in load(path)["Parameters"]["CorsAllowedOrigins"]


@pytest.mark.parametrize("path", [TEMPLATE, MANAGED], ids=["default", "managed"])
def test_only_the_task_functions_may_read_the_better_auth_secret(path):
    """With BetterAuthSecretArn, each task function's role may read it; the health function's
    (which verifies no token, and serves every scanner's request through the fallback
    routes) may not: it is given the ARN only to know there is one, and never reads it."""
    template = transformed(path)
    conditions = template.get("Conditions", {})
    auth_arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:todo-api/better-auth-GhIjKl"
    params = {**{name: p.get("Default") for name, p in template["Parameters"].items()},
              "BetterAuthSecretArn": auth_arn}
    roles = of_type(template, "AWS::IAM::Role")
    for name, function in functions(path).items():
        role = roles[function["Properties"]["Role"]["Fn::GetAtt"][0]]
        resources = []
        for policy in role["Properties"].get("Policies", []):
            policy = evaluate(policy, params, conditions)
            if policy != {"Ref": "AWS::NoValue"}:
                for statement in policy["PolicyDocument"]["Statement"]:
                    if "secretsmanager:GetSecretValue" in json.dumps(statement["Action"]):
                        resources.append(json.dumps(statement["Resource"]))
        reads_auth = any("BetterAuthSecretArn" in r for r in resources)
        if name.startswith("HealthFunction"):
            assert not reads_auth, (name, resources)
        else:
            assert reads_auth, (name, resources)
