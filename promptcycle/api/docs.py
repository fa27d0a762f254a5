"""The API's reference page, `/docs`: the OpenAPI document rendered as one HTML page with no external assets.

FastAPI's own /docs page loads Swagger UI from a CDN and stays blank offline; this one is plain HTML
built on the server from the same `/openapi.json`, so it reads the same with or without a network.
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["render_docs"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1b1f24}
h2{border-bottom:1px solid #ccd;padding-bottom:.2rem;margin-top:2rem}
.op{border:1px solid #ccd;border-radius:6px;padding:.6rem 1rem;margin:1rem 0}
.method{font-weight:bold;font-family:monospace;padding:.1rem .4rem;border-radius:4px;color:#fff}
.get{background:#2f6f9f}.post{background:#3a8a4a}
code,.path{font-family:monospace}.path{font-size:1.05rem;margin-left:.4rem}
table{border-collapse:collapse;margin:.4rem 0}td,th{border:1px solid #dde;padding:.2rem .5rem;text-align:left;
vertical-align:top;font-size:.92rem}th{background:#f3f4f8}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
    if "anyOf" in schema:
        return " | ".join(_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(_e(json.dumps(v)) for v in schema["enum"])
    if "const" in schema:
        return _e(json.dumps(schema["const"]))
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    bounds = [f"{word} {schema[key]}" for key, word in (("minimum", "≥"), ("maximum", "≤"), ("minLength", "length ≥"),
                                                          ("maxLength", "length ≤"), ("minItems", "items ≥"),
                                                          ("maxItems", "items ≤")) if key in schema]
    fmt = f" ({schema['format']})" if "format" in schema else ""
    return _e(f"{kind}{fmt}" + (f", {', '.join(bounds)}" if bounds else ""))


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    parts = [f'<div class="op"><span class="method {method}">{method.upper()}</span>'
             f'<span class="path">{_e(path)}</span>',
             f"<p><b>{_e(op.get('summary', ''))}</b></p>"]
    if op.get("description"):
        parts.append("".join(f"<p>{_e(p)}</p>" for p in op["description"].split("\n\n")))
    if op.get("security"):
        parts.append("<p>Needs <code>Authorization: Bearer &lt;token&gt;</code>.</p>")
    params = op.get("parameters", [])
    if params:
        rows = "".join(f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td>"
                       f"<td>{'yes' if p.get('required') else 'no'}</td><td>{_type(p.get('schema', {}))}</td>"
                       f"<td>{_e(p.get('description', ''))}</td></tr>" for p in params)
        parts.append("<table><tr><th>parameter</th><th>in</th><th>required</th><th>type</th><th>meaning</th></tr>"
                     f"{rows}</table>")
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if body:
        parts.append(f"<p>Body (JSON): {_type(body)}</p>")
    responses = op.get("responses", {})
    if responses:
        rows = "".join(f"<tr><td>{_e(code)}</td><td>{_e(r.get('description', ''))}</td><td>"
                       f"{_type(r.get('content', {}).get('application/json', {}).get('schema', {})) if r.get('content') else ''}"
                       "</td></tr>" for code, r in responses.items())
        parts.append(f"<table><tr><th>status</th><th>meaning</th><th>body</th></tr>{rows}</table>")
    parts.append("</div>")
    return "".join(parts)


def _schema(name: str, schema: dict[str, Any]) -> str:
    required = set(schema.get("required", []))
    rows = "".join(f"<tr><td><code>{_e(field)}</code></td><td>{'yes' if field in required else 'no'}</td>"
                   f"<td>{_type(spec)}</td><td>{_e(spec.get('description', ''))}</td></tr>"
                   for field, spec in schema.get("properties", {}).items())
    return (f'<h3 id="schema-{_e(name)}">{_e(name)}</h3><p>{_e(schema.get("description", ""))}</p>'
            f"<table><tr><th>field</th><th>required</th><th>type</th><th>meaning</th></tr>{rows}</table>")


def render_docs(openapi: dict[str, Any]) -> str:
    """The page for the OpenAPI document `openapi`."""
    info = openapi.get("info", {})
    ops = "".join(_operation(path, method, op) for path, methods in openapi.get("paths", {}).items()
                  for method, op in methods.items())
    schemas = "".join(_schema(name, s) for name, s in openapi.get("components", {}).get("schemas", {}).items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(info.get('title', 'API'))}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{_e(info.get('title', ''))} {_e(info.get('version', ''))}</h1>"
            + "".join(f"<p>{_e(p)}</p>" for p in info.get("description", "").split("\n\n") if p)
            + "<p>The machine-readable document: <a href='/openapi.json'>/openapi.json</a>.</p>"
            f"<h2>Endpoints</h2>{ops}<h2>Schemas</h2>{schemas}</body></html>")
