"""projection_probe: reproduce and extend 'Mysterious Projections' (Verma et al. 2024)."""

__version__ = "0.1.0"
