"""One router module per resource; each exposes `router` (an `APIRouter`)."""
