"""Studies: search spaces, trials, tracking and the runner (``abexrat study run``).

The package is also callable: ``abexrat.study(path, **options)`` runs a study and returns a
:class:`abexrat.study_api.StudyResult` (see :func:`abexrat.study_api.study`).
"""

from abexrat._callable import make_callable

make_callable(__name__, "abexrat.study_api:study")
