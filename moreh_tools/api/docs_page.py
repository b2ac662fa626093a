"""``GET /docs``: a page listing every endpoint, built in the browser from ``/openapi.json``, with nothing fetched
from anywhere else (FastAPI's Swagger page loads its scripts from a CDN, which an offline master cannot reach).

The page is one HTML document with its style and script inline; its only request is ``openapi.json`` on
the same server. For a full interactive explorer, load ``/openapi.json`` into any OpenAPI tool.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse

DOCS_PATH = "/docs"

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>SDAManager REST API</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 72em; padding: 1em 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ccc; }
details { border: 1px solid #ddd; border-radius: 4px; margin: .35em 0; padding: .3em .6em; }
summary { cursor: pointer; } code, .path { font-family: ui-monospace, monospace; }
.method { display: inline-block; min-width: 4.5em; font-weight: bold; font-family: ui-monospace, monospace; }
.GET { color: #1565c0; } .POST { color: #2e7d32; } .PUT { color: #ef6c00; } .DELETE { color: #c62828; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: .2em .5em; text-align: left; }
.muted { color: #666; }
</style>
</head>
<body>
<h1>SDAManager REST API (moreh-tools)</h1>
<p id="about" class="muted">Loading <a href="openapi.json">openapi.json</a>&hellip;</p>
<div id="endpoints"></div>
<noscript><p>This page needs JavaScript to list the endpoints; the description itself is at
<a href="openapi.json">openapi.json</a>.</p></noscript>
<script>
"use strict";
function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function kind(schema) {
  if (!schema) return "";
  return schema.type || (schema.anyOf || []).map(s => s.type).filter(Boolean).join(" | ") || "";
}
fetch("openapi.json").then(r => r.json()).then(spec => {
  const about = document.getElementById("about");
  about.textContent = (spec.info.description || "") + " Version " + spec.info.version + ". ";
  const link = el("a", {href: "openapi.json"}, "openapi.json");
  about.append("Machine-readable description: ", link, ".");
  const groups = {};
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags && op.tags[0]) || "Other";
      (groups[tag] = groups[tag] || []).push([method.toUpperCase(), path, op]);
    }
  }
  const root = document.getElementById("endpoints");
  for (const tag of Object.keys(groups).sort()) {
    root.append(el("h2", {}, tag));
    for (const [method, path, op] of groups[tag]) {
      const box = el("details");
      const head = el("summary");
      head.append(el("span", {class: "method " + method}, method), el("span", {class: "path"}, path),
                  " ", el("span", {class: "muted"}, op.summary || ""));
      box.append(head);
      if (op.description) box.append(el("p", {}, op.description));
      if (op.security) box.append(el("p", {class: "muted"}, "Needs a token: Authorization: Bearer <token>, or ?apikey=<token>."));
      const params = op.parameters || [];
      if (params.length) {
        const table = el("table");
        const header = el("tr");
        for (const h of ["parameter", "in", "type", "required", "description"]) header.append(el("th", {}, h));
        table.append(header);
        for (const p of params) {
          const row = el("tr");
          for (const v of [p.name, p.in, kind(p.schema), p.required ? "yes" : "no", p.description || ""]) row.append(el("td", {}, v));
          table.append(row);
        }
        box.append(table);
      }
      const codes = Object.entries(op.responses || {}).map(([code, r]) => code + ": " + (r.description || ""));
      if (codes.length) box.append(el("p", {class: "muted"}, "Responses: " + codes.join("; ")));
      root.append(box);
    }
  }
}).catch(err => {
  document.getElementById("about").textContent = "Could not load openapi.json: " + err;
});
</script>
</body>
</html>
"""


async def docs_page(request: Request) -> HTMLResponse:
    """The page (see the module docstring)."""
    return HTMLResponse(PAGE)
