"""Every table of every service, gathered for Alembic. Each service owns its own tables."""

from handoff_service import action_models as handoff_action_models
from handoff_service import models as handoff_models
from scoring_service import models as scoring_models
from services import models as runtime_models
from services.db import Base
from services.gateway import models as gateway_models
from sla_monitor import models as sla_models

metadata = Base.metadata

__all__ = [
    "gateway_models",
    "handoff_action_models",
    "handoff_models",
    "metadata",
    "runtime_models",
    "scoring_models",
    "sla_models",
]
