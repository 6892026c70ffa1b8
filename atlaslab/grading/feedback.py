"""Feedback without hidden tests, for nbgrader's generate_feedback wherever it runs (formgrader, CLI, atlaslab).

Course directories name :class:`HideHiddenTests` in ``GenerateFeedback.preprocessors`` unless the course
reveals its hidden tests (``courses.ID.reveal_hidden_tests`` in the site config).
"""

from __future__ import annotations

from nbformat.v4 import new_output
from nbgrader.preprocessors import ClearHiddenTests

STOCK_PREPROCESSORS = ["nbgrader.preprocessors.GetGrades", "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor"]
HIDING_PREPROCESSORS = [
    "nbgrader.preprocessors.GetGrades",
    "atlaslab.grading.feedback.HideHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]


class HideHiddenTests(ClearHiddenTests):
    """Feedback without hidden tests: their source goes, and so does whatever their cell printed.

    A failing hidden test's traceback quotes its code and an assertion message may quote the expected value,
    so an error in such a cell is reduced to its exception name; other output is dropped.
    """

    enforce_metadata = False

    def preprocess_cell(self, cell, resources, cell_index):
        try:
            removed = self._remove_hidden_test_region(cell)
        except RuntimeError:  # unbalanced markers: hide the whole cell
            cell.source, removed = "# (hidden tests)", True
        if removed and cell.cell_type == "code":
            kept = []
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    line = f"{out.get('ename', 'Error')}: a hidden test failed (details are not shown)"
                    kept.append(new_output("error", ename=out.get("ename", "Error"), evalue="", traceback=[line]))
            cell.outputs = kept
        return cell, resources


def feedback_preprocessors(reveal_hidden_tests: bool) -> list[str]:
    return list(STOCK_PREPROCESSORS if reveal_hidden_tests else HIDING_PREPROCESSORS)
