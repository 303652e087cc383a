"""PlasmaArt: a self-hostable platform that sells generative AI for credits."""

__version__ = "0.1.0"
