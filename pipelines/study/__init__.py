"""Evidence as code: a declarative study file (:mod:`.schema`), ``zo study run|report|archive`` (:mod:`.recipe`,
:mod:`.cli`) and the compact archive of finished runs committed in git (:mod:`.archive`)."""
from .schema import Study, load_study

__all__ = ["Study", "load_study"]
