"""infra/azure/main.bicep, checked offline. No Bicep compiler installs from the registries this
project uses (PyPI, npm, Debian), so this file parses the subset of Bicep the template is
written in (decorators, params, resources with loops, objects, arrays, strings with
interpolation, expressions) and checks what the Azure trigger relies on: BlobCreated only, in
the Event Grid schema, to the stack's endpoint with ``?code=`` and a secure, long enough code,
subject filters per watched container, a retry policy and a dead-letter container. A parse
error is a test failure, so a syntax slip (an unclosed brace, a stray token) is caught too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from convbridge.storage.azure_identity import FEDERATION_AUDIENCE

ROOT = Path(__file__).resolve().parents[2]
BICEP = ROOT / "infra" / "azure" / "main.bicep"
FEDERATION = ROOT / "infra" / "azure" / "federation.bicep"

# --- a small Bicep reader ----------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^'\\\n]|\\.)*')
  | (?P<newline>\n)
  | (?P<space>[ \t\r]+)
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||\?\?|[{}\[\]():,=?@!.<>+\-*/%])
    """,
    re.S | re.X,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    line: int


@dataclass
class Expr:
    """An expression kept as text (references, function calls, operators)."""

    text: str


@dataclass
class Loop:
    """``[for item in source: body]``"""

    variables: str
    source: str
    body: Any


@dataclass
class Declaration:
    keyword: str
    name: str
    type: str | None = None
    value: Any = None
    decorators: dict[str, list[Any]] = field(default_factory=dict)
    existing: bool = False


class BicepSyntaxError(Exception):
    pass


def tokenize(text: str) -> list[Token]:
    tokens, position, line = [], 0, 1
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            raise BicepSyntaxError(f"line {line}: unexpected {text[position]!r}")
        kind = match.lastgroup
        assert kind is not None
        value = match.group()
        if kind not in {"comment", "space"}:
            tokens.append(Token(kind, value, line))
        line += value.count("\n")
        position = match.end()
    return tokens


class Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.index = 0

    def peek(self, skip_newlines: bool = False) -> Token | None:
        index = self.index
        while skip_newlines and index < len(self.tokens) and self.tokens[index].kind == "newline":
            index += 1
        return self.tokens[index] if index < len(self.tokens) else None

    def take(self, text: str | None = None, kind: str | None = None) -> Token:
        token = self.peek()
        if token is None:
            raise BicepSyntaxError(f"unexpected end of file, wanted {text or kind}")
        if (text is not None and token.text != text) or (kind is not None and token.kind != kind):
            raise BicepSyntaxError(f"line {token.line}: wanted {text or kind}, got {token.text!r}")
        self.index += 1
        return token

    def newlines(self) -> None:
        while (token := self.peek()) is not None and token.kind == "newline":
            self.index += 1

    def file(self) -> list[Declaration]:
        declarations = []
        self.newlines()
        while self.peek() is not None:
            decorators: dict[str, list[Any]] = {}
            while (token := self.peek()) is not None and token.text == "@":
                self.take("@")
                name = self.take(kind="name").text
                self.take("(")
                arguments = []
                while (token := self.peek(skip_newlines=True)) is not None and token.text != ")":
                    self.newlines()
                    arguments.append(self.value(stop={",", ")"}))
                    self.newlines()
                    if (token := self.peek()) is not None and token.text == ",":
                        self.take(",")
                self.newlines()
                self.take(")")
                decorators[name] = arguments
                self.newlines()
            declarations.append(self.declaration(decorators))
            self.newlines()
        return declarations

    def declaration(self, decorators: dict[str, list[Any]]) -> Declaration:
        keyword = self.take(kind="name").text
        if keyword == "targetScope":
            self.take("=")
            return Declaration(keyword, keyword, value=self.value())
        if keyword == "extension":
            # `extension microsoftGraphV1`: an alias bicepconfig.json resolves
            return Declaration(keyword, self.take(kind="name").text)
        if keyword not in {"param", "var", "resource", "output"}:
            raise BicepSyntaxError(f"unknown declaration {keyword!r}")
        name = self.take(kind="name").text
        declaration = Declaration(keyword, name, decorators=decorators)
        if keyword == "resource":
            declaration.type = self.take(kind="string").text.strip("'")
            if (token := self.peek()) is not None and token.text == "existing":
                self.take("existing")
                declaration.existing = True
        elif keyword in {"param", "output"}:
            declaration.type = self.take(kind="name").text
        token = self.peek()
        if token is not None and token.text == "=":
            self.take("=")
            declaration.value = self.value()
        elif keyword != "param":
            raise BicepSyntaxError(f"{keyword} {name} has no value")
        return declaration

    def value(self, stop: frozenset[str] | set[str] = frozenset()) -> Any:
        token = self.peek()
        if token is None:
            raise BicepSyntaxError("unexpected end of file, wanted a value")
        if token.text == "{":
            return self.object()
        if token.text == "[":
            return self.array()
        return self.expression(stop)

    def object(self) -> dict[str, Any]:
        self.take("{")
        found: dict[str, Any] = {}
        self.newlines()
        while (token := self.peek()) is not None and token.text != "}":
            key = token.text.strip("'")
            if token.kind not in {"name", "string"}:
                raise BicepSyntaxError(f"line {token.line}: bad object key {token.text!r}")
            self.index += 1
            self.take(":")
            if key in found:
                raise BicepSyntaxError(f"line {token.line}: duplicate key {key!r}")
            found[key] = self.value(stop={"}"})
            if (after := self.peek()) is not None and after.text != "}":
                self.take(kind="newline")
            self.newlines()
        self.take("}")
        return found

    def array(self) -> list[Any] | Loop:
        self.take("[")
        if (token := self.peek()) is not None and token.text == "for":
            self.take("for")
            variables = []
            while (token := self.peek()) is not None and token.text != "in":
                variables.append(token.text)
                self.index += 1
            self.take("in")
            source = []
            while (token := self.peek()) is not None and token.text != ":":
                source.append(token.text)
                self.index += 1
            self.take(":")
            body = self.value(stop={"]"})
            self.take("]")
            return Loop(" ".join(variables), "".join(source), body)
        items = []
        self.newlines()
        while (token := self.peek()) is not None and token.text != "]":
            items.append(self.value(stop={"]"}))
            self.newlines()
        self.take("]")
        return items

    def expression(self, stop: frozenset[str] | set[str]) -> Any:
        parts: list[str] = []
        depth = 0
        while (token := self.peek()) is not None:
            if depth == 0 and (token.kind == "newline" or token.text in stop):
                break
            if token.text in {"(", "["}:
                depth += 1
            elif token.text in {")", "]"}:
                depth -= 1
                if depth < 0:
                    raise BicepSyntaxError(f"line {token.line}: unbalanced {token.text!r}")
            parts.append(token.text)
            self.index += 1
        if depth != 0:
            raise BicepSyntaxError(f"unbalanced brackets in {' '.join(parts)[:60]!r}")
        if not parts:
            raise BicepSyntaxError("empty value")
        if len(parts) == 1:
            single = parts[0]
            if single.startswith("'"):
                return single[1:-1]
            if single in {"true", "false"}:
                return single == "true"
            if re.fullmatch(r"-?\d+", single):
                return int(single)
        return Expr(" ".join(parts))


def parse(text: str) -> dict[str, dict[str, Declaration]]:
    found: dict[str, dict[str, Declaration]] = {}
    for declaration in Parser(text).file():
        names = found.setdefault(declaration.keyword, {})
        assert declaration.name not in names, f"{declaration.name} declared twice"
        names[declaration.name] = declaration
    return found


# --- the template ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bicep() -> dict[str, dict[str, Declaration]]:
    return parse(BICEP.read_text())


def _resource(bicep: dict[str, dict[str, Declaration]], type_prefix: str) -> Declaration:
    (found,) = [r for r in bicep["resource"].values() if r.type and r.type.startswith(type_prefix)]
    return found


def test_parses_and_declares_what_the_readme_passes(
    bicep: dict[str, dict[str, Declaration]],
) -> None:
    assert set(bicep["param"]) == {
        "storageAccountName", "location", "endpointUrl", "endpointCode", "watched",
        "subjectEndsWith", "deadLetterContainerName", "maxDeliveryAttempts",
        "eventTimeToLiveInMinutes", "maxEventsPerBatch",
    }
    for declaration in bicep["param"].values():
        assert "description" in declaration.decorators, declaration.name
    # Every api version is a dated, generally available one (no -preview).
    for resource in bicep["resource"].values():
        assert resource.type and re.fullmatch(r"Microsoft\.[\w./]+@\d{4}-\d{2}-\d{2}",
                                              resource.type), resource.type


def test_every_identifier_used_is_declared(bicep: dict[str, dict[str, Declaration]]) -> None:
    text = BICEP.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    interpolated = set(re.findall(r"\$\{(\w+)", code))
    declared = {name for kind in bicep.values() for name in kind} | {"item", "index"}
    assert interpolated - declared == set()


def test_endpoint_code_is_secure_and_long_enough(bicep: dict[str, dict[str, Declaration]]) -> None:
    code = bicep["param"]["endpointCode"]
    assert "secure" in code.decorators
    # convbridge.triggers.event_grid refuses codes shorter than 32 characters.
    assert code.decorators["minLength"] == [32]
    assert code.value is None  # no default: never a code in the repository


def test_subscription_delivers_blob_created_to_the_trigger(
    bicep: dict[str, dict[str, Declaration]],
) -> None:
    subscription = _resource(bicep, "Microsoft.EventGrid/systemTopics/eventSubscriptions@")
    assert isinstance(subscription.value, Loop)
    assert subscription.value.source == "watched"
    body = subscription.value.body
    properties = body["properties"]
    destination = properties["destination"]
    assert destination["endpointType"] == "WebHook"
    # The trigger reads exactly one `code` query parameter (triggers/event_grid.py).
    assert destination["properties"]["endpointUrl"] == "${endpointUrl}?code=${endpointCode}"
    assert properties["eventDeliverySchema"] == "EventGridSchema"
    filters = properties["filter"]
    assert filters["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
    assert filters["subjectBeginsWith"] == (
        "/blobServices/default/containers/${item.container}/blobs/${item.prefix}")
    assert filters["subjectEndsWith"] == Expr("subjectEndsWith")
    retry = properties["retryPolicy"]
    assert retry == {"maxDeliveryAttempts": Expr("maxDeliveryAttempts"),
                     "eventTimeToLiveInMinutes": Expr("eventTimeToLiveInMinutes")}
    dead_letter = properties["deadLetterDestination"]
    assert dead_letter["endpointType"] == "StorageBlob"
    assert dead_letter["properties"] == {"resourceId": Expr("storage . id"),
                                         "blobContainerName": Expr("deadLetterContainerName")}
    assert body["dependsOn"] == [Expr("deadLetters")]
    assert body["parent"] == Expr("systemTopic")


def test_system_topic_is_on_the_storage_account(
    bicep: dict[str, dict[str, Declaration]],
) -> None:
    topic = _resource(bicep, "Microsoft.EventGrid/systemTopics@")
    assert topic.value["properties"] == {
        "source": Expr("storage . id"), "topicType": "Microsoft.Storage.StorageAccounts",
    }
    storage = _resource(bicep, "Microsoft.Storage/storageAccounts@")
    assert storage.existing and storage.value == {"name": Expr("storageAccountName")}
    container = _resource(bicep, "Microsoft.Storage/storageAccounts/blobServices/containers@")
    assert container.value["properties"] == {"publicAccess": "None"}
    assert container.value["name"] == Expr("deadLetterContainerName")


def test_limits_match_event_grid(bicep: dict[str, dict[str, Declaration]]) -> None:
    params = bicep["param"]
    assert params["maxDeliveryAttempts"].decorators["maxValue"] == [30]
    assert params["eventTimeToLiveInMinutes"].decorators["maxValue"] == [1440]
    assert params["maxEventsPerBatch"].decorators["maxValue"] == [5000]
    default = params["watched"].value
    assert default == [{"container": "inbox", "prefix": ""}]


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("param location string = resourceGroup().location\n", "param location string = (\n"),
        ("  properties: {\n    publicAccess: 'None'\n  }\n",
         "  properties: {\n    publicAccess: 'None'\n"),
        ("    eventDeliverySchema: 'EventGridSchema'\n",
         "    eventDeliverySchema: 'EventGridSchema'\n"
         "    eventDeliverySchema: 'CloudEventSchemaV1_0'\n"),
    ],
    ids=["unbalanced-parenthesis", "unclosed-object", "duplicate-key"],
)
def test_the_reader_rejects_broken_bicep(broken: str, message: str) -> None:
    text = BICEP.read_text()
    assert text.count(broken) == 1
    with pytest.raises((BicepSyntaxError, AssertionError)):
        parse(text.replace(broken, message))


# --- federation.bicep: the Entra app the bridge signs in as -----------------------------------

#: built-in role definitions (Azure RBAC), by what the bridge does with them
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_BLOB_DELEGATOR = "db58b8e5-c6ad-4a2a-8342-4190687cbf4a"


@pytest.fixture(scope="module")
def federation() -> dict[str, dict[str, Declaration]]:
    return parse(FEDERATION.read_text())


def test_federation_declares_what_the_readme_passes(
    federation: dict[str, dict[str, Declaration]],
) -> None:
    assert set(federation["extension"]) == {"microsoftGraphV1"}
    config = json.loads((FEDERATION.parent / "bicepconfig.json").read_text())
    assert config["extensions"]["microsoftGraphV1"].startswith(
        "br:mcr.microsoft.com/bicep/extensions/microsoftgraph/v1.0:")
    assert set(federation["param"]) == {
        "storageAccountName", "issuer", "subjects", "appUniqueName", "appDisplayName"}
    for declaration in federation["param"].values():
        assert "description" in declaration.decorators, declaration.name
    # Entra's limit of federated credentials per application.
    assert federation["param"]["subjects"].decorators["maxLength"] == [20]
    assert federation["param"]["issuer"].value is None  # account-level: always given
    assert set(federation["output"]) >= {"tenantId", "clientId"}
    assert federation["output"]["clientId"].value == Expr("app . appId")
    code = "\n".join(line for line in FEDERATION.read_text().splitlines()
                     if not line.lstrip().startswith("//"))
    declared = {name for kind in federation.values() for name in kind} | {"subject", "index"}
    assert set(re.findall(r"\$\{(\w+)", code)) - declared == set()


def test_federated_credentials_trust_each_role_for_entra_token_exchange(
    federation: dict[str, dict[str, Declaration]],
) -> None:
    app = _resource(federation, "Microsoft.Graph/applications@")
    assert app.value["uniqueName"] == Expr("appUniqueName")  # redeploying updates the same app
    credentials = _resource(
        federation, "Microsoft.Graph/applications/federatedIdentityCredentials@")
    assert isinstance(credentials.value, Loop)
    assert credentials.value.source == "subjects"
    body = credentials.value.body
    # convbridge.storage.azure_identity asks STS for exactly this audience.
    assert body["audiences"] == [FEDERATION_AUDIENCE]
    assert body["issuer"] == Expr("issuer")
    assert body["subject"] == Expr("subject")
    assert body["name"].startswith("${app.uniqueName}/")
    principal = _resource(federation, "Microsoft.Graph/servicePrincipals@")
    assert principal.value == {"appId": Expr("app . appId")}


def test_service_principal_may_read_write_and_delegate_on_the_account(
    federation: dict[str, dict[str, Declaration]],
) -> None:
    assignments = _resource(federation, "Microsoft.Authorization/roleAssignments@")
    assert isinstance(assignments.value, Loop)
    (roles,) = [v for v in federation["var"].values() if v.name == assignments.value.source]
    assert sorted(roles.value) == sorted([STORAGE_BLOB_DATA_CONTRIBUTOR, STORAGE_BLOB_DELEGATOR])
    body = assignments.value.body
    assert body["scope"] == Expr("storage")
    properties = body["properties"]
    assert properties["principalId"] == Expr("servicePrincipal . id")
    assert properties["principalType"] == "ServicePrincipal"
    variable = assignments.value.variables.split()[0]
    assert properties["roleDefinitionId"] == Expr(
        f"subscriptionResourceId ( 'Microsoft.Authorization/roleDefinitions' , {variable} )")
    # A stable name per (account, principal, role): deploying again is a no-op, not a conflict.
    assert body["name"] == Expr(f"guid ( storage . id , servicePrincipal . id , {variable} )")
    storage = _resource(federation, "Microsoft.Storage/storageAccounts@")
    assert storage.existing and storage.value == {"name": Expr("storageAccountName")}
