"""nbgrader's exchange, talking to AtlasLab's exchange service instead of a shared world-writable directory.

Configured through nbgrader's ``ExchangeFactory`` (AtlasLab writes a site-wide nbgrader_config.py that does it),
so nbgrader's own commands (release_assignment, fetch_assignment, submit, list, collect, release_feedback,
fetch_feedback) and its assignment list in JupyterLab work unchanged. Each class behaves like nbgrader's default
one: same options, same messages, same return values (``ExchangeList.start()`` returns the same dicts).

Who the caller is comes from the token (``JUPYTERHUB_API_TOKEN``: in a user's server, the server's own token),
never from the command line: the service records the token's user as the submitter and decides what they may
see. Differences from the filesystem exchange, all on the side of safety:

* submissions are never removed or overwritten (``nbgrader list --inbound --remove`` is refused);
* the student's submissions and feedback are listed from the service, not from a local cache, so they are
  the same from every machine;
* feedback belongs to one submission, found by its timestamp, not to a hash of a secret kept by the student.

One module per nbgrader command, as in nbgrader's own default exchange, and :mod:`.base` for what they share. Every
class is imported here: the site's nbgrader_config.py names them ``atlaslab.grading.client.<class>``.
"""

from __future__ import annotations

from atlaslab.grading.client.base import Exchange
from atlaslab.grading.client.collect import ExchangeCollect
from atlaslab.grading.client.fetch_assignment import ExchangeFetchAssignment
from atlaslab.grading.client.fetch_feedback import ExchangeFetchFeedback
from atlaslab.grading.client.list import ExchangeList
from atlaslab.grading.client.release_assignment import ExchangeReleaseAssignment
from atlaslab.grading.client.release_feedback import ExchangeReleaseFeedback
from atlaslab.grading.client.submit import ExchangeSubmit

__all__ = [
    "Exchange",
    "ExchangeCollect",
    "ExchangeFetchAssignment",
    "ExchangeFetchFeedback",
    "ExchangeList",
    "ExchangeReleaseAssignment",
    "ExchangeReleaseFeedback",
    "ExchangeSubmit",
]
