"""Shared by the cloud providers: code staging, the container bootstrap and launcher, catalogs.

``launcher.py`` is standard-library only: it is copied into every job archive.
"""
