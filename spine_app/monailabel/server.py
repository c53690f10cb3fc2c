"""MONAI Label's FastAPI ``app`` with the spine app's request policy in front of its routes.

``spine-app monailabel serve`` starts ``monailabel start_server --uvicorn_app
spine_app.monailabel.server:app``; importing this module (the app does it too when MONAI Label was
started without it) :func:`secure`\\ s ``monailabel.app.app``:

- MONAI Label's CORS middleware (any origin, with credentials, when ``MONAI_LABEL_CORS_ORIGINS`` is
  empty) is replaced by one that allows only ``--cors-origin`` origins (none by default);
- :class:`~spine_app.monailabel.security.RequestGuard` refuses paths as ids, foreign origins and hosts,
  deletes and oversized uploads before MONAI Label's handlers write anything;
- ``POST /infer/{model}`` takes only a datastore id (404 naming an unknown one) or an uploaded film, and
  ``params`` may not replace the film, label or model.

The policy comes from ``SPINE_APP_MONAILABEL_*`` variables (:class:`~spine_app.monailabel.security.ServerPolicy`).
"""

import json
import logging
from typing import Any, Optional

from fastapi import BackgroundTasks, Depends, FastAPI, File, Form, HTTPException, UploadFile
from fastapi.middleware import Middleware
from fastapi.middleware.cors import CORSMiddleware
from monailabel.app import app as monailabel_app
from monailabel.config import settings
from monailabel.endpoints import infer as infer_endpoint
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from spine_app.monailabel.security import RESERVED_INFER_PARAMS, RequestGuard, ServerPolicy

logger = logging.getLogger(__name__)
ALLOWED_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE"]


async def checked_infer(
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile = File(None),  # noqa: B008 - FastAPI declares parameters this way (as MONAI Label does)
    label: UploadFile = File(None),  # noqa: B008
    output: Optional[infer_endpoint.ResultType] = None,  # noqa: UP045 - FastAPI reads this signature
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),  # noqa: B008
) -> Any:
    """MONAI Label's ``POST /infer/{model}`` for a datastore id or an uploaded film only."""
    try:
        request_params = json.loads(params) if params else {}
    except json.JSONDecodeError as err:
        raise HTTPException(422, f"params is not JSON: {err}") from err
    if not isinstance(request_params, dict):
        raise HTTPException(422, "params must be a JSON object")
    reserved = sorted(set(request_params) & set(RESERVED_INFER_PARAMS))
    if reserved:
        raise HTTPException(
            422, f"params may not set {', '.join(reserved)}: name the film with ?image=<id> or upload it"
        )
    if session_id:
        raise HTTPException(422, "sessions are off in this server: give ?image=<datastore id> or upload the film")
    if image and not app_instance().datastore().get_image_uri(image):
        raise HTTPException(404, f"image {image!r} is not in the datastore")
    if not image and not file:
        raise HTTPException(422, "give ?image=<datastore id> or upload the film as the form field 'file'")
    return infer_endpoint.run_inference(background_tasks, model, image, "", params, file, label, output)


def secure(app: FastAPI, policy: Optional[ServerPolicy] = None) -> FastAPI:  # noqa: UP045
    """Install the CORS allow-list, the request guard and the checked infer route on ``app`` (once).

    Called before the first request, or from the app's start-up (the middleware stack is then rebuilt
    on the next request)."""
    if getattr(app.state, "spine_app_policy", None) is not None:
        return app
    policy = policy or ServerPolicy.from_environment()
    kept = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    cors = Middleware(
        CORSMiddleware,
        allow_origins=list(policy.cors_origins),
        allow_credentials=False,
        allow_methods=ALLOWED_METHODS,
        allow_headers=["*"],
    )
    app.user_middleware = [cors, Middleware(RequestGuard, policy=policy), *kept]
    app.middleware_stack = None
    app.router.add_api_route(
        f"{settings.MONAI_LABEL_API_STR}/infer/{{model}}", checked_infer, methods=["POST"], include_in_schema=False
    )
    app.router.routes.insert(0, app.router.routes.pop())  # matched before MONAI Label's own route
    app.state.spine_app_policy = policy
    logger.info(
        "CORS allow-list: %s; deletes %s; uploads up to %.0f MB",
        ", ".join(policy.cors_origins) or "none (same origin only)",
        "allowed" if policy.allow_delete else "refused",
        policy.max_upload_bytes / 2**20,
    )
    return app


app = secure(monailabel_app)

__all__ = ["app", "checked_infer", "secure"]
