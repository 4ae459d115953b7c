"""Deployment on Flower's Deployment Engine: throwaway PKI, process supervision, and a
whole federation on loopback (`LocalFederation`). See docs/deployment.md."""

from umbra.deploy.errors import CertificateError, DeployError, PortInUseError
from umbra.deploy.local_federation import RUN_OK, LocalFederation, NodeSpec
from umbra.deploy.processes import ManagedProcess, ProcessSupervisor

__all__ = [
    "RUN_OK",
    "CertificateError",
    "DeployError",
    "LocalFederation",
    "ManagedProcess",
    "NodeSpec",
    "PortInUseError",
    "ProcessSupervisor",
]
