"""Grading: nbgrader courses, the exchange service and client, the sandboxed autograder."""
