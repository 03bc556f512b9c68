"""`/v1/models`: list, retrieve and delete models.

Ids may contain `/` and `:` (`acme/support-bot`, `ft:tiny:org-a::abc`), and the official
client percent-encodes `/` as `%2F`; the `{model_id:path}` converter receives the decoded id
either way. Ids are looked up in the registry, never used as paths.
"""

from __future__ import annotations

from fastapi import APIRouter

from tuneforge.inference.registry import AdminOnly, ModelEntry, NotDeletable
from tuneforge.jobs.errors import StoreError
from tuneforge.server.deps import CurrentPrincipal, Registry
from tuneforge.server.errors import ERROR_RESPONSES, APIError, model_not_found
from tuneforge.server.schemas import ModelDeleted, ModelList, ModelPublic

router = APIRouter(prefix="/v1", tags=["models"], responses={401: ERROR_RESPONSES[401]})


def _public(entry: ModelEntry) -> ModelPublic:
    return ModelPublic(id=entry.id, created=entry.created, owned_by=entry.owned_by)


@router.get("/models")
def list_models(registry: Registry, principal: CurrentPrincipal) -> ModelList:
    """Every model the caller's organization can use: the base, adapters, fine-tunes."""
    return ModelList(data=[_public(e) for e in registry.list(principal.org_id)])


@router.get("/models/{model_id:path}", responses={404: ERROR_RESPONSES[404]})
def retrieve_model(model_id: str, registry: Registry, principal: CurrentPrincipal) -> ModelPublic:
    entry = registry.resolve(model_id, principal.org_id)
    if entry is None:
        raise model_not_found(model_id)
    return _public(entry)


@router.delete(
    "/models/{model_id:path}",
    responses={
        404: ERROR_RESPONSES[404],
        400: ERROR_RESPONSES[400],
        403: ERROR_RESPONSES[403],
        409: ERROR_RESPONSES[409],
    },
)
def delete_model(model_id: str, registry: Registry, principal: CurrentPrincipal) -> ModelDeleted:
    """Delete a fine-tune of the caller's organization with its files and checkpoints. The
    base model never; a folder of the model store (shared by every organization) only with
    an admin key; models TuneForge did not make never."""
    try:
        deleted = registry.delete(model_id, principal.org_id, admin=principal.admin)
    except AdminOnly:
        raise APIError(
            403,
            f"The model '{model_id}' belongs to the server's model store; only an admin key "
            "may delete it.",
            param="model",
            code="insufficient_permissions",
        ) from None
    except NotDeletable:
        raise APIError(
            400, f"The model '{model_id}' cannot be deleted.", param="model", code="not_deletable"
        ) from None
    except StoreError as err:  # e.g. 409: a queued job starts from this fine-tune
        raise APIError(err.status, err.message, param=err.param, code=err.code) from None
    if not deleted:
        raise model_not_found(model_id)
    return ModelDeleted(id=model_id, deleted=True)
