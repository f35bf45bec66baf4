"""The vote's rules (SPEC 12): a critic's result checked, mesh's rubric, the tally, the
tie-breaks in their order, and the other ways of choosing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worktree_mesh.consensus import vote
from worktree_mesh.consensus.vote import (
    RUBRIC,
    Candidate,
    Critique,
    InvalidCritique,
    Standing,
    agrees,
    default_quorum,
    first_passing,
    parse_critique,
    rubric_mean,
    rubric_passes,
    smallest,
    tally,
)

NAMES = ("a", "b", "c")
GOOD = dict.fromkeys(RUBRIC, 4)


def marks(*values: int) -> dict[str, int]:
    return dict(zip(RUBRIC, values, strict=True))


def critique(critic: str = "k", *, decision: str = "accept", votes: dict[str, str] | None = None,
             ranking: tuple[str, ...] = (), scores: dict[str, dict[str, int]] | None = None,
             round: int = 1) -> Critique:
    return Critique(critic, round, decision, votes or {}, ranking, scores or {}, "", "")


def cands(*specs: tuple[str, int, bool]) -> list[Candidate]:
    return [Candidate(name, order, lines, passed)
            for order, (name, lines, passed) in enumerate(specs)]


def parse(data: Any, candidates: tuple[str, ...] = NAMES) -> Critique:
    return parse_critique(data, critic="correctness", round=2, unit_id="u1",
                          candidates=candidates)


# --- quorum and the rubric -------------------------------------------------------------------

@pytest.mark.parametrize(("critics", "quorum"), [(1, 1), (2, 1), (3, 2), (4, 3), (5, 4)])
def test_default_quorum_is_all_critics_but_one_at_least_one(critics: int, quorum: int) -> None:
    assert default_quorum(critics) == quorum


def test_rubric_line_is_mean_four_and_no_dimension_below_three() -> None:
    assert rubric_mean(marks(5, 4, 4, 4, 3)) == 4.0
    assert rubric_passes(marks(5, 4, 4, 4, 3))          # exactly on the line
    assert not rubric_passes(marks(4, 4, 4, 4, 3))      # mean 3.8
    assert not rubric_passes(marks(5, 5, 5, 5, 2))      # mean 4.4, one dimension 2
    assert rubric_passes(marks(3, 5, 5, 3, 4))


def test_agree_counts_only_under_accept_with_passing_scores() -> None:
    assert agrees(critique(votes={"a": "agree"}), "a")
    assert agrees(critique(votes={"a": "agree"}, scores={"a": GOOD}), "a")
    # an agree under a rejecting decision is a disagree
    assert not agrees(critique(decision="reject", votes={"a": "agree"}), "a")
    # scores below the line, by the mean and by one dimension
    assert not agrees(critique(votes={"a": "agree"}, scores={"a": marks(4, 4, 4, 4, 3)}), "a")
    assert not agrees(critique(votes={"a": "agree"}, scores={"a": marks(5, 5, 5, 5, 2)}), "a")
    # a candidate the critic left out of votes
    assert not agrees(critique(votes={"a": "agree"}), "b")
    assert not agrees(critique(votes={"a": "disagree"}), "a")
    # another candidate's low scores do not touch this one
    assert agrees(critique(votes={"a": "agree"}, scores={"b": marks(1, 1, 1, 1, 1)}), "a")


def test_tally_counts_those_disagrees() -> None:
    field = cands(("a", 1, True))
    critiques = [critique("k1", votes={"a": "agree"}),
                 critique("k2", decision="reject", votes={"a": "agree"}),
                 critique("k3", votes={"a": "agree"}, scores={"a": marks(4, 4, 4, 4, 3)}),
                 critique("k4", votes={"a": "agree"}, scores={"a": marks(5, 5, 5, 5, 2)}),
                 critique("k5", votes={})]
    result = tally(field, critiques, quorum=2)
    assert result.standings[0].agree == 1
    assert result.chosen is None
    assert tally(field, critiques, quorum=1).chosen == "a"


# --- Borda and the rubric mean ---------------------------------------------------------------

def test_borda_gives_n_minus_one_to_the_first_and_nothing_to_the_unranked() -> None:
    field = cands(("a", 1, True), ("b", 1, True), ("c", 1, True))
    result = tally(field, [critique("k1", ranking=("a", "b", "c")),
                           critique("k2", ranking=("c", "a")),
                           critique("k3", ranking=("b",)),
                           critique("k4")], quorum=1)
    assert {s.name: s.borda for s in result.standings} == {"a": 2 + 0, "b": 1, "c": 1}


def test_rubric_mean_is_over_the_critics_that_scored_it() -> None:
    field = cands(("a", 1, True), ("b", 1, True))
    result = tally(field, [critique("k1", scores={"a": marks(4, 4, 4, 4, 4)}),
                           critique("k2", scores={"a": marks(5, 5, 5, 5, 5)}),
                           critique("k3", decision="reject", scores={"a": marks(3, 3, 3, 3, 3)}),
                           critique("k4")], quorum=1)
    assert result.standings == (Standing("a", 0, 0, 4.0), Standing("b", 0, 0, None))


# --- the choice and its tie-breaks, each in turn ---------------------------------------------

def both_agree(n: int = 2, **extra: Any) -> list[Critique]:
    return [critique(f"k{i}", votes={"a": "agree", "b": "agree"}, **extra) for i in range(n)]


def test_borda_breaks_the_tie_first() -> None:
    # b is ranked higher, though a is better scored, smaller and earlier
    field = cands(("a", 1, True), ("b", 50, True))
    critiques = [critique("k1", votes={"a": "agree", "b": "agree"}, ranking=("b", "a"),
                          scores={"a": marks(5, 5, 5, 5, 5), "b": GOOD}),
                 critique("k2", votes={"a": "agree", "b": "agree"}, ranking=("a", "b")),
                 critique("k3", votes={"a": "agree", "b": "agree"}, ranking=("b", "a"))]
    assert tally(field, critiques, quorum=2).chosen == "b"


def test_rubric_mean_breaks_a_borda_tie() -> None:
    field = cands(("a", 1, True), ("b", 50, True))
    critiques = both_agree(scores={"a": GOOD, "b": marks(5, 4, 4, 4, 4)})
    assert tally(field, critiques, quorum=2).chosen == "b"


def test_a_candidate_nobody_scored_has_the_lowest_mean() -> None:
    field = cands(("a", 1, True), ("b", 50, True))
    # b's only scores come from a critic against it, and still beat no scores at all
    critiques = [*both_agree(),
                 critique("k9", decision="reject", scores={"b": marks(1, 1, 1, 1, 1)})]
    assert tally(field, critiques, quorum=2).chosen == "b"


def test_smaller_diff_breaks_a_rubric_tie() -> None:
    field = cands(("a", 9, True), ("b", 3, True))
    assert tally(field, both_agree(scores={"a": GOOD, "b": GOOD}), quorum=2).chosen == "b"
    assert tally(field, both_agree(), quorum=2).chosen == "b"


def test_variant_order_breaks_the_last_tie() -> None:
    field = [Candidate("synthesis", 2, 4, True), Candidate("b", 1, 4, True),
             Candidate("a", 0, 4, True)]
    critiques = [critique(f"k{i}", votes=dict.fromkeys(("a", "b", "synthesis"), "agree"))
                 for i in range(2)]
    result = tally(field, critiques, quorum=2)
    assert result.chosen == "a"
    assert [s.name for s in result.standings] == ["a", "b", "synthesis"]


def test_only_candidates_reaching_quorum_compete() -> None:
    field = cands(("a", 1, True), ("b", 1, True))
    critiques = [critique("k1", votes={"a": "agree", "b": "agree"}, ranking=("a", "b")),
                 critique("k2", votes={"b": "agree"}, ranking=("a", "b"))]
    assert tally(field, critiques, quorum=2).chosen == "b"


def test_a_failed_candidate_is_never_chosen_nor_stands() -> None:
    field = cands(("a", 1, False), ("b", 1, True))
    critiques = [critique(f"k{i}", votes={"a": "agree"}, ranking=("a", "b")) for i in range(3)]
    result = tally(field, critiques, quorum=1)
    assert result.chosen is None
    assert result.standings == (Standing("b", 0, 0, None),)


def test_no_quorum_chooses_nothing() -> None:
    field = cands(("a", 1, True), ("b", 1, True))
    critiques = [critique("k1", votes={"a": "agree"}), critique("k2", votes={"b": "agree"}),
                 critique("k3", decision="reject", votes={"a": "agree", "b": "agree"})]
    result = tally(field, critiques, quorum=2)
    assert result.chosen is None
    assert [s.agree for s in result.standings] == [1, 1]
    assert tally(field, [], quorum=1).chosen is None


def test_tally_refuses_a_quorum_below_one_and_repeated_names() -> None:
    with pytest.raises(ValueError, match="quorum"):
        tally(cands(("a", 1, True)), [], quorum=0)
    with pytest.raises(ValueError, match="repeat"):
        tally([Candidate("a", 0, 1, True), Candidate("a", 1, 1, True)], [], quorum=1)


def test_tally_record_is_json() -> None:
    field = cands(("a", 1, True), ("b", 2, True))
    record = tally(field, both_agree(scores={"a": GOOD}, ranking=("a", "b")), 2).as_record()
    assert json.loads(json.dumps(record)) == {
        "standings": [{"name": "a", "agree": 2, "borda": 2, "rubric_mean": 4.0},
                      {"name": "b", "agree": 2, "borda": 0, "rubric_mean": None}],
        "chosen": "a"}


def test_first_passing_and_smallest() -> None:
    field = [Candidate("a", 0, 2, False), Candidate("c", 2, 3, True),
             Candidate("b", 1, 9, True), Candidate("d", 3, 3, True)]
    assert first_passing(field) == "b"
    assert smallest(field) == "c"   # fewest lines among the passing, then order
    assert smallest([Candidate("a", 0, 1, False)]) is None
    assert first_passing([Candidate("a", 0, 1, False)]) is None
    assert first_passing([]) is None and smallest([]) is None
    assert vote.SELECT_MODES == ("vote", "first_passing", "smallest", "manual")


# --- a critic's result -----------------------------------------------------------------------

def test_a_full_result_parses() -> None:
    data = {"id": "u1", "decision": "accept", "votes": {"a": "agree", "b": "disagree"},
            "ranking": ["a", "b"], "scores": {"a": GOOD}, "flip": "a failing test",
            "notes": "fine", "usage": {"tokens_in": 3}}
    got = parse(data)
    assert got == Critique("correctness", 2, "accept", {"a": "agree", "b": "disagree"},
                           ("a", "b"), {"a": GOOD}, "a failing test", "fine")


def test_a_minimal_result_parses() -> None:
    got = parse({"decision": "reject", "votes": {}, "notes": None})
    assert got == Critique("correctness", 2, "reject", {}, (), {}, "", "")


def test_a_critique_does_not_change_with_its_input() -> None:
    data: dict[str, Any] = {"decision": "accept", "votes": {"a": "agree"},
                            "scores": {"a": dict(GOOD)}}
    got = parse(data)
    data["votes"]["a"] = "disagree"
    data["scores"]["a"]["contract_clarity"] = 1
    assert got.votes == {"a": "agree"} and got.scores["a"]["contract_clarity"] == 4
    with pytest.raises(TypeError):
        got.votes["a"] = "disagree"  # type: ignore[index]


def test_record_is_the_shape_of_previous_and_reads_back() -> None:
    got = parse({"decision": "accept", "votes": {"a": "agree"}, "ranking": ["a"],
                 "scores": {"a": GOOD}, "flip": "f", "notes": "n"})
    record = got.as_record()
    assert json.loads(json.dumps(record)) == {
        "critic": "correctness", "round": 2, "decision": "accept", "votes": {"a": "agree"},
        "ranking": ["a"], "scores": {"a": GOOD}, "flip": "f", "notes": "n"}
    assert Critique.from_record(json.loads(json.dumps(record))) == got


def scored(value: Any, key: str = "contract_clarity") -> dict[str, Any]:
    return {"decision": "accept", "votes": {}, "scores": {"a": {**GOOD, key: value}}}


ok = {"decision": "accept", "votes": {}}


@pytest.mark.parametrize(("data", "message"), [
    ([], "critic result must be a JSON object, got an array"),
    ("accept", "critic result must be a JSON object, got a string"),
    (None, "critic result must be a JSON object, got null"),
    ({**ok, "id": "u2"}, "critic result is for unit 'u2', not 'u1'"),
    ({"votes": {}}, "decision None is not one of accept, reject"),
    ({**ok, "decision": "agree"}, "decision 'agree' is not one of accept, reject"),
    ({"decision": "accept"}, "votes must be an object of candidate -> agree|disagree, got null"),
    ({**ok, "votes": ["a"]}, ("votes must be an object of candidate -> agree|disagree, "
                             "got an array")),
    ({**ok, "votes": {"z": "agree"}}, "votes names 'z', not one of the candidates (a, b, c)"),
    ({**ok, "votes": {"a": "yes"}}, "votes['a'] is 'yes', not one of agree, disagree"),
    ({**ok, "ranking": "a"}, "ranking must be an array of candidates, got a string"),
    ({**ok, "ranking": ["a", "z"]}, "ranking names 'z', not one of the candidates (a, b, c)"),
    ({**ok, "ranking": [["a"]]}, "ranking names ['a'], not one of the candidates (a, b, c)"),
    ({**ok, "ranking": ["a", "b", "a"]}, "ranking names candidate 'a' more than once"),
    ({**ok, "scores": [GOOD]}, "scores must be an object of candidate -> rubric, got an array"),
    ({**ok, "scores": {"z": GOOD}}, "scores names 'z', not one of the candidates (a, b, c)"),
    ({**ok, "scores": {"a": 4}}, "scores['a'] must be an object of rubric scores, got a number"),
    (scored(0), "scores['a'].contract_clarity must be a whole number 1-5, got 0"),
    (scored(6), "scores['a'].contract_clarity must be a whole number 1-5, got 6"),
    (scored(4.0), "scores['a'].contract_clarity must be a whole number 1-5, got 4.0"),
    (scored("4"), "scores['a'].contract_clarity must be a whole number 1-5, got '4'"),
    (scored(True), "scores['a'].contract_clarity must be a whole number 1-5, got True"),
    (scored(None, "legibility_trace"),
     "scores['a'].legibility_trace must be a whole number 1-5, got None"),
    (scored(4, "clarity"), ("scores['a'] has unknown rubric key 'clarity' (known: "
                           "contract_clarity, invariant_strength, minimal_incision, "
                           "proof_credibility, legibility_trace)")),
    ({**ok, "scores": {"a": {k: 4 for k in RUBRIC[:4]}}},
     "scores['a'] lacks rubric key 'legibility_trace'"),
    ({**ok, "flip": 3}, "flip must be a string, got a number"),
    ({**ok, "notes": ["x"]}, "notes must be a string, got an array"),
])
def test_a_bad_result_says_what_is_wrong_in_one_line(data: Any, message: str) -> None:
    with pytest.raises(InvalidCritique) as caught:
        parse(data)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_no_candidates_is_said_so() -> None:
    with pytest.raises(InvalidCritique, match=r"not one of the candidates \(none\)"):
        parse({**ok, "votes": {"a": "agree"}}, candidates=())


# --- properties ------------------------------------------------------------------------------

PROPERTY = settings(max_examples=300, deadline=None)
POOL = ("a", "b", "c", "d", "synthesis")
score_sets = st.fixed_dictionaries({key: st.integers(1, 5) for key in RUBRIC})


@st.composite
def fields(draw: st.DrawFn) -> list[Candidate]:
    names = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=5, unique=True))
    orders = draw(st.permutations(range(len(names))))
    return [Candidate(name, order, draw(st.integers(0, 4)), draw(st.booleans()))
            for name, order in zip(names, orders, strict=True)]


@st.composite
def results(draw: st.DrawFn, names: list[str]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "decision": draw(st.sampled_from(("accept", "reject"))),
        "votes": draw(st.dictionaries(st.sampled_from(names), st.sampled_from(("agree",
                                                                                 "disagree")))),
    }
    if draw(st.booleans()):
        data["ranking"] = draw(st.permutations(names).flatmap(
            lambda p: st.integers(0, len(p)).map(lambda n: p[:n])))
    if draw(st.booleans()):
        data["scores"] = draw(st.dictionaries(st.sampled_from(names), score_sets))
    return data


@st.composite
def rounds(draw: st.DrawFn) -> tuple[list[Candidate], list[Critique], int]:
    field = draw(fields())
    names = [c.name for c in field]   # failed ones too: the vote must ignore them regardless
    critiques = [parse_critique(draw(results(names)), critic=f"k{i}", round=1, unit_id="u",
                                candidates=names)
                 for i in range(draw(st.integers(0, 5)))]
    return field, critiques, draw(st.integers(1, 5))


@PROPERTY
@given(rounds())
def test_the_chosen_one_passed_and_reached_quorum(case: tuple[list[Candidate],
                                                              list[Critique], int]) -> None:
    field, critiques, quorum = case
    result = tally(field, critiques, quorum)
    passing = {c.name for c in field if c.passed}
    assert {s.name for s in result.standings} == passing
    agree = {s.name: s.agree for s in result.standings}
    for s in result.standings:
        assert s.agree == sum(1 for q in critiques if agrees(q, s.name))
    if result.chosen is None:
        assert all(n < quorum for n in agree.values())
    else:
        assert result.chosen in passing and agree[result.chosen] >= quorum
        best = max(s.borda for s in result.standings if s.agree >= quorum)
        assert {s.name: s.borda for s in result.standings}[result.chosen] == best


@PROPERTY
@given(rounds(), st.randoms(use_true_random=False))
def test_the_order_of_critiques_and_candidates_does_not_matter(
        case: tuple[list[Candidate], list[Critique], int], rnd: Any) -> None:
    field, critiques, quorum = case
    shuffled_field, shuffled_critiques = list(field), list(critiques)
    rnd.shuffle(shuffled_field)
    rnd.shuffle(shuffled_critiques)
    assert tally(shuffled_field, shuffled_critiques, quorum) == tally(field, critiques, quorum)


@PROPERTY
@given(rounds())
def test_a_critique_survives_its_record_and_its_result(
        case: tuple[list[Candidate], list[Critique], int]) -> None:
    field, critiques, _ = case
    names = [c.name for c in field]
    for q in critiques:
        record = json.loads(json.dumps(q.as_record()))
        assert Critique.from_record(record) == q
        again = {key: record[key] for key in ("decision", "votes", "ranking", "scores",
                                                "flip", "notes")}
        assert parse_critique(again, critic=q.critic, round=q.round, unit_id="u",
                              candidates=names) == q
