"""The pure parts of login: claim paths, groups, group -> tenant, 42 campus selection."""

from __future__ import annotations

import pytest

from atlaslab.hub.auth.claims import campus_tenant, claim, claim_groups, primary_campus, tenant_for_groups

KEYCLOAK = {
    "preferred_username": "alice",
    "groups": ["/staff", "/staff/teachers"],
    "realm_access": {"roles": ["offline_access", "students"]},
    "resource_access": {"atlaslab": {"roles": ["instructor"]}},
    "https://lab.example.ma/groups": ["namespaced"],
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("preferred_username", "alice"),
        ("realm_access.roles", ["offline_access", "students"]),
        ("resource_access.atlaslab.roles", ["instructor"]),
        ("https://lab.example.ma/groups", ["namespaced"]),  # a claim named with dots
        ("realm_access.missing", None),
        ("preferred_username.deeper", None),  # a string has no keys
        ("nothing", None),
        ("", None),
    ],
)
def test_claim_path(path, expected):
    assert claim(KEYCLOAK, path) == expected


def test_claim_groups_shapes():
    assert claim_groups(KEYCLOAK, "realm_access.roles") == ["offline_access", "students"]
    assert claim_groups({"role": "admin"}, "role") == ["admin"]  # a single group
    assert claim_groups({"g": ["a", 7, {"x": 1}, None]}, "g") == ["a", "7"]  # odd members dropped
    assert claim_groups({"g": {"a": 1}}, "g") == []
    assert claim_groups(KEYCLOAK, "absent") == []


def test_first_matching_group_in_config_order_wins():
    mapping = {"staff": "lab", "students": "school", "alumni": "alumni"}
    assert tenant_for_groups(["students", "staff"], mapping) == "lab"
    assert tenant_for_groups(["alumni", "students"], mapping) == "school"
    assert tenant_for_groups(["guests"], mapping) is None
    assert tenant_for_groups([], mapping) is None


ME_MOVED = {
    "login": "yabouh",
    "campus": [{"id": 21, "name": "Khouribga"}, {"id": 55, "name": "Benguerir"}],
    "campus_users": [
        {"id": 1, "user_id": 9, "campus_id": 21, "is_primary": False},
        {"id": 2, "user_id": 9, "campus_id": 55, "is_primary": True},
    ],
}


def test_primary_campus():
    assert primary_campus(ME_MOVED) == "Benguerir"
    # no campus marked primary: the first one listed
    assert primary_campus({**ME_MOVED, "campus_users": []}) == "Khouribga"
    # a primary entry naming a campus that is not listed is ignored
    assert primary_campus({**ME_MOVED, "campus_users": [{"campus_id": 99, "is_primary": True}]}) == "Khouribga"
    assert primary_campus({"login": "x"}) is None
    assert primary_campus({"campus": None, "campus_users": None}) is None


def test_campus_tenant_is_case_insensitive():
    mapping = {"benguerir": "bg", "Khouribga": "kh"}
    assert campus_tenant(ME_MOVED, mapping) == ("Benguerir", "bg")
    assert campus_tenant({**ME_MOVED, "campus_users": []}, mapping) == ("Khouribga", "kh")
    paris = {"campus": [{"id": 1, "name": "Paris"}], "campus_users": [{"campus_id": 1, "is_primary": True}]}
    assert campus_tenant(paris, mapping) == ("Paris", None)
    assert campus_tenant({}, mapping) == (None, None)
