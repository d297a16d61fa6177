"""Schemas for the custom kinds of k8s/components that the shared CRD folder lacks:
cert-manager's Issuer and Certificate (cert-manager.io/v1) and the Prometheus Operator's
PodMonitor (monitoring.coreos.com/v1).

Each is the part of the upstream CRD's openAPIV3Schema that the components use, with the
upstream field names, types and enums, closed (additionalProperties: false) like the API
server's pruning: a misspelt or misplaced field fails instead of being dropped silently.
"""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_GO_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(h|m|s|ms|us|ns))+$"}


def _closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_METADATA = _closed({
    "name": _STR, "namespace": _STR,
    "labels": {"type": "object", "additionalProperties": _STR},
    "annotations": {"type": "object", "additionalProperties": _STR},
}, ("name", "namespace"))

_LABEL_SELECTOR = _closed({
    "matchLabels": {"type": "object", "additionalProperties": _STR},
    "matchExpressions": {"type": "array", "items": _closed({
        "key": _STR, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
        "values": {"type": "array", "items": _STR}}, ("key", "operator"))},
})

_ISSUER_REF = _closed({"name": _STR, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": _STR}, ("name",))

_USAGES = ["signing", "digital signature", "content commitment", "key encipherment", "key agreement",
           "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth",
           "client auth", "code signing", "email protection", "s/mime", "ipsec end system", "ipsec tunnel",
           "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]

SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("cert-manager.io/v1", "Issuer"): _closed({
        "apiVersion": _STR, "kind": _STR, "metadata": _METADATA,
        "spec": _closed({
            "selfSigned": _closed({"crlDistributionPoints": {"type": "array", "items": _STR}}),
            "ca": _closed({"secretName": _STR, "crlDistributionPoints": {"type": "array", "items": _STR},
                           "ocspServers": {"type": "array", "items": _STR}}, ("secretName",)),
        }),
    }, ("apiVersion", "kind", "metadata", "spec")),
    ("cert-manager.io/v1", "Certificate"): _closed({
        "apiVersion": _STR, "kind": _STR, "metadata": _METADATA,
        "spec": _closed({
            "secretName": _STR, "commonName": _STR, "isCA": {"type": "boolean"},
            "dnsNames": {"type": "array", "items": _STR, "minItems": 1},
            "duration": _GO_DURATION, "renewBefore": _GO_DURATION,
            "usages": {"type": "array", "items": {"enum": _USAGES}},
            "privateKey": _closed({"algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
                                   "encoding": {"enum": ["PKCS1", "PKCS8"]},
                                   "rotationPolicy": {"enum": ["Never", "Always"]}}),
            "issuerRef": _ISSUER_REF,
        }, ("secretName", "issuerRef")),
    }, ("apiVersion", "kind", "metadata", "spec")),
    ("monitoring.coreos.com/v1", "PodMonitor"): _closed({
        "apiVersion": _STR, "kind": _STR, "metadata": _METADATA,
        "spec": _closed({
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": _closed({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}}),
            "jobLabel": _STR,
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _closed({
                "port": _STR, "path": _STR, "scheme": {"enum": ["http", "https"]},
                "interval": _DURATION, "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
                "relabelings": {"type": "array", "items": _closed({
                    "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
                    "targetLabel": _STR, "regex": _STR, "replacement": _STR, "separator": _STR,
                    "action": {"enum": ["replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                                        "lowercase", "uppercase", "keepequal", "dropequal"]},
                })},
            })},
        }, ("selector", "podMetricsEndpoints")),
    }, ("apiVersion", "kind", "metadata", "spec")),
}


def extra_errors(doc: dict[str, Any]) -> list[str]:
    """Violations of a cert-manager / Prometheus Operator object, as 'path: message' lines."""
    import jsonschema

    schema = SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if schema is None:
        return [f"{doc['apiVersion']} {doc['kind']}: no schema here for this kind"]
    validator = jsonschema.Draft7Validator(schema)
    return [f"{doc['kind']}/{doc['metadata'].get('name')}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)]
