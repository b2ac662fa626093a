"""The route modules: each exposes ``router = APIRouter()``; ``create_app`` includes them in this order."""

ROUTER_MODULES = (
    "moreh_tools.api.routes.user",
    "moreh_tools.api.routes.check",
    "moreh_tools.api.routes.hardware",
    "moreh_tools.api.routes.backend",
    "moreh_tools.api.routes.sdamodel",
    "moreh_tools.api.routes.sda",
    "moreh_tools.api.routes.token",
    "moreh_tools.api.routes.scheduler",
    "moreh_tools.api.routes.membership",
    "moreh_tools.api.routes.usage",
    "moreh_tools.api.routes.log",
    "moreh_tools.api.routes.quota",
    "moreh_tools.api.routes.guardian",
)
