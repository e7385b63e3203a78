"""A peer simulator for the Session Supervisor: the catalog, Blob Service, User Service and
User Manager of /work/shared/CONTRACT.md over real HTTP and a real kombu broker, with
simulated render users; or the HTTP peers alone (`SimulatorConfig(amqp=False, users=0)`), as
the integration tests use them. It imports nothing from `app`, `supervisor` or `tasks`."""

from simulator.config import SimulatorConfig
from simulator.core import Simulator, SimulatorError

__all__ = ["Simulator", "SimulatorConfig", "SimulatorError"]
