"""Benchmark families are declared in mmke_tasks/<family>/family.yaml; bad declarations name the file and key."""

import pytest

from mmke_eval import families


def test_declared_families_and_their_kinds():
    mmke = families.get("mmke")
    assert [name for name, _ in mmke.columns] == ["t_rel", "i_rel", "i_gen", "t_loc", "i_loc", "port"]
    assert [p.name for p in mmke.probes if p.is_locality] == ["t_loc", "i_loc"]
    assert mmke.probe("i_loc").locality == "i_loc_k" and mmke.probe("t_loc").locality == "t_loc_k"
    assert [p.name for p in mmke.probes if p.portability] == ["port"]
    assert mmke.probe("t_loc").metric_names() == ["t_loc", "t_loc_em"]
    assert mmke.probe("t_rel").metric_names() == ["t_rel", "t_rel_em", "t_rel_contains"]
    assert families.kind_of({"family": "vlkeb", "probe": "port"}).portability
    assert set(families.names()) >= {"mmke", "vlkeb", "mmedit"}


def test_unknown_names_are_errors_that_list_the_known_ones():
    with pytest.raises(families.FamilyError, match=r"unknown benchmark family 'nonesuch'; declared in mmke_tasks/\*/family\.yaml: .*mmke"):
        families.get("nonesuch")
    with pytest.raises(families.FamilyError, match="benchmark 'mmedit' has no probe kind 'port'"):
        families.get("mmedit").probe("port")


@pytest.mark.parametrize("entry, problem", [
    ({"title": "no name"}, "expected a mapping with a name"),
    ({"name": "x", "locality": "k"}, r"\.locality: expected one of"),
    ({"name": "x", "image": "left"}, r"\.image: expected one of"),
    ({"name": "x", "colour": "red"}, r": unknown key\(s\) \['colour'\]"),
])
def test_bad_probe_declarations_name_the_key(entry, problem):
    with pytest.raises(families.FamilyError, match=r"mmke_tasks/demo/family\.yaml probes\[0\].*" + problem):
        families._probe_kind("demo", 0, entry)


def test_a_family_is_one_folder_found_by_its_declaration(tmp_path, monkeypatch):
    """A folder mmke_tasks/<name>/ with a family.yaml is a family named <name>; nothing else lists it."""
    import shutil

    from mmke_eval import resources

    mike_columns = families.get("mike").columns
    shutil.copytree(resources.tasks_dir() / "mike", tmp_path / "mike_copy")
    (tmp_path / "no_family").mkdir()  # a folder without a declaration is not a family
    monkeypatch.setattr(resources, "tasks_dir", lambda: tmp_path)
    families.declarations.cache_clear()
    families.get.cache_clear()
    try:
        assert families.names() == ["mike_copy"]
        assert families.get("mike_copy").columns == mike_columns
        assert [family.name for family in families.with_mini()] == ["mike_copy"]
    finally:
        families.declarations.cache_clear()
        families.get.cache_clear()
