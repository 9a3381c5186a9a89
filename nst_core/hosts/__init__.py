"""Artefacts for hosts in other languages: the host bundle (``bundle``) and the browser host's server (``web``)."""
