"""Backends. Each sub-package turns portable specs into native requests for one platform.

The core never imports these directly: it finds them through ``mlcloud.registry``.
"""
