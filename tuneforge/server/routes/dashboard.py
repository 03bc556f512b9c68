"""`/v1/dashboard/...`: the two views the web dashboard needs that the API lacks.

- `POST /v1/dashboard/files/{file_id}/clean`: what `tuneforge data clean` would keep, fix and
  reject in an uploaded file, without storing anything (a preview; the counts and the first
  rejected lines).
- `GET /v1/dashboard/models/{model_id}/report`: a model's evaluation report (`report.html`
  as `tuneforge eval` writes it into `<model>/eval/`), served inert: a CSP that allows no
  script at all and sandboxes the document.

Both take the caller's key and see only the caller's organization's files and models, as the
rest of the API. Thin: the data layer does the work (`tuneforge.data.clean`).
"""

from __future__ import annotations

import itertools
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from tuneforge.server.deps import CurrentPrincipal, Registry
from tuneforge.server.errors import ERROR_RESPONSES, APIError, model_not_found
from tuneforge.server.jobs import Store

router = APIRouter(
    prefix="/v1/dashboard",
    tags=["dashboard"],
    responses={s: ERROR_RESPONSES[s] for s in (400, 401, 404)},
)

# Rejected lines returned by the clean preview (the counts cover every line).
REJECTS_SHOWN = 50
# A rejected line's text is cut to this many characters in the preview.
RAW_SHOWN = 500
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"
# An absolute path in a report's text (after a tag, a space or a parenthesis; never inside a
# data URL): the report names the folders it was made from, which are the server's business.
_SERVER_PATH = re.compile(r"(?<=[>\s(])/(?:[^\s<>\"'/]+/)+([^\s<>\"'/]*)")


@router.post("/files/{file_id}/clean")
def clean_preview(file_id: str, store: Store, principal: CurrentPrincipal) -> dict[str, Any]:
    """What cleaning the file would do: `read`, `kept`, `rejected`, `fixes` (with the first
    line numbers of each in `fix_lines`), `rejections` by reason, and the first rejected
    lines (`rejected_lines`: line, code, reason, raw). Nothing is stored."""
    from tuneforge.data.clean import CleanOptions, clean
    from tuneforge.data.io import DatasetError

    row = store.get_file(principal.org_id, file_id)
    source = store.file_path(row)
    with tempfile.TemporaryDirectory(prefix="tuneforge-clean-") as tmp:
        out = Path(tmp) / "clean.jsonl"
        try:
            report = clean(source, out, CleanOptions(workers=1))
        except DatasetError as err:
            message = str(err).replace(str(source), row.filename)
            raise APIError(400, message, param="file_id", code="invalid_file") from None
        except FileNotFoundError:
            raise APIError(
                404, f"The bytes of file '{file_id}' are missing from the store.", param="file_id"
            ) from None
        rejected = []
        with open(report.rejects, encoding="utf-8") as f:
            for line in itertools.islice(f, REJECTS_SHOWN):
                r = json.loads(line)
                raw = str(r.get("raw", ""))
                rejected.append({**r, "raw": raw[:RAW_SHOWN]})
    body = report.to_dict()
    for private in ("input", "output", "rejects"):  # server paths
        body.pop(private, None)
    body["filename"] = row.filename
    body["rejected_lines"] = rejected
    return body


@router.get(
    "/models/{model_id:path}/report",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}}},
)
def model_report(model_id: str, registry: Registry, principal: CurrentPrincipal) -> Response:
    """The model's evaluation report (HTML without script), server paths cut to their last
    part; 404 `report_not_found` when the model was never evaluated."""
    entry = registry.resolve(model_id, principal.org_id)
    if entry is None:
        raise model_not_found(model_id)
    report = entry.path / "eval" / "report.html" if entry.path is not None else None
    if report is None or not report.is_file():
        raise APIError(
            404,
            f"The model '{model_id}' has no evaluation report; write one with "
            "`tuneforge eval` (into the model's eval/ folder).",
            param="model",
            code="report_not_found",
        )
    text = _SERVER_PATH.sub(r"…/\1", report.read_text(encoding="utf-8", errors="replace"))
    return Response(
        text,
        media_type="text/html",
        headers={"Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff"},
    )
