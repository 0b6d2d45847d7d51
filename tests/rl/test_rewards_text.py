"""Format / accuracy rewards on hand-written completions; matcher; progress state."""

import numpy as np
import pytest

from sif_jax.rl.rewards import (
    REWARDS,
    RewardConfig,
    RewardState,
    accuracy_reward,
    combined_reward,
    extract_answer,
    format_reward,
)
from sif_jax.rl.rewards_match import match_answer, normalize_text

from .helpers import make_batch, trace

VALID = trace([([[0, 0, 1, 1]], [0.5]), ([[0.1, 0.2, 0.4, 0.6]], [0.3])], answer="B")
T = '<think><area>{}</area><text>look.</text></think><answer>B</answer>'
BAD = {
    "malformed_json": T.format('[{"bbox_2d":[0.1,0.2,0.4,0.6],"depth":0.3}'),
    "four_decimals": T.format('[{"bbox_2d":[0.1234,0.2,0.4,0.6],"depth":0.3}]'),
    "empty_answer": '<think><area>[{"bbox_2d":[0,0,1,1],"depth":0.5}]</area><text>x</text></think><answer> </answer>',
    "out_of_range": T.format('[{"bbox_2d":[0.1,0.2,1.4,0.6],"depth":0.3}]'),
    "inverted": T.format('[{"bbox_2d":[0.4,0.2,0.1,0.6],"depth":0.3}]'),
    "missing_think_close": '<think><area>[{"bbox_2d":[0,0,1,1],"depth":0.5}]</area><text>x</text><answer>B</answer>',
    "garbage": "\x00<<<area>>>}{][ \ud800 <answer",
    "empty": "",
    "hypothesis_like": '<think><area>[{"bbox_2d":[NaN,1e5,-0.0,1],"depth":Infinity}]</area><text></text></think>',
}


def test_format_reward_valid_and_malformed():
    texts = [VALID, *BAD.values()]
    res = format_reward(make_batch(texts), RewardState(), RewardConfig())
    assert res.rewards.dtype == np.float32
    np.testing.assert_array_equal(res.rewards, [1.0] + [0.0] * len(BAD))


@pytest.mark.parametrize("name", sorted(BAD))
def test_every_reward_never_raises_and_gates(name):
    batch = make_batch([BAD[name], VALID], depth_maps=[np.full((8, 8), 0.3, np.float32)] * 2)
    for fn_name, fn in REWARDS.items():
        res = fn(batch, RewardState(), RewardConfig())
        assert res.rewards.shape == (2,) and np.all(np.isfinite(res.rewards)), fn_name
        if fn_name in ("format", "iou", "depth"):
            assert res.rewards[0] == 0.0, fn_name
    total = combined_reward(batch, RewardState(), RewardConfig())
    assert np.all(np.isfinite(total.rewards))


def test_non_string_text_is_zero():
    batch = make_batch(["x", VALID])
    batch.texts[0] = None  # a decoding bug upstream must not crash the step
    res = combined_reward(batch, RewardState(), RewardConfig())
    assert res.parts["format"][0] == 0 and res.parts["accuracy"][0] == 0


@pytest.mark.parametrize(
    "pred, gold, choices, expected",
    [
        ("B", "B", ["red cube", "blue sphere"], 1.0),
        ("(B)", "B", ["red cube", "blue sphere"], 1.0),
        ("B.", "B", ["red cube", "blue sphere"], 1.0),
        ("b", "B", ["red cube", "blue sphere"], 1.0),
        ("B) blue sphere", "B", ["red cube", "blue sphere"], 1.0),
        ("The answer is B", "B", ["red cube", "blue sphere"], 1.0),
        ("Blue Sphere.", "B", ["red cube", "blue sphere"], 1.0),
        ("the blue sphere", "blue sphere", ["A. red cube", "B. blue sphere"], 1.0),
        ("B", "blue sphere", ["(A) red cube", "(B) blue sphere"], 1.0),
        ("A", "B", ["red cube", "blue sphere"], 0.0),
        ("red cube", "B", ["red cube", "blue sphere"], 0.0),
        ("A red cube", "A", ["red cube", "blue sphere"], 1.0),  # article, not a letter
        ("3", "3", None, 1.0),
        ("There are 3 cubes.", "3", None, 1.0),
        ("three", "3", None, 1.0),
        ("3.01", "3", None, 0.0),
        ("3.0004", "3", None, 1.0),  # |p - g| <= 1e-6 + 1e-3 * 3
        ("0.2501", "0.25", None, 1.0),  # within rtol 1e-3
        ("2 or 3", "3", None, 0.0),  # hedging is not rewarded
        ("1,000", "1000", None, 1.0),
        ("4", "3", None, 0.0),
        ("Left.", "left", None, 1.0),
        ("  THE   Left ", "left", None, 1.0),
        ("right", "left", None, 0.0),
        ("", "left", None, 0.0),
        # numeric options: number words and a number with a unit noun name the numeric option
        ("3 cubes", "3", ["1", "2", "3", "4"], 1.0),
        ("three", "3", ["1", "2", "3", "4"], 1.0),
        ("Three cubes.", "3", ["1", "2", "3", "4"], 1.0),
        ("There are three.", "3", ["1", "2", "3", "4"], 1.0),
        ("The answer is 3 objects", "3", ["1", "2", "3", "4"], 1.0),
        ("3", "3 cubes", ["1 cube", "2 cubes", "3 cubes"], 1.0),
        ("twelve", "12", ["10", "11", "12", "13"], 1.0),
        ("twenty-one", "21", ["19", "20", "21", "22"], 1.0),
        ("4 cubes", "3", ["1", "2", "3", "4"], 0.0),
        ("2 or 3", "3", ["1", "2", "3", "4"], 0.0),  # two numbers: names no option
        ("C", "3", ["1", "2", "3", "4"], 0.0),  # options not lettered: a letter names nothing
        # letters only pick an option when the options are lettered choices
        ("a", "yes", ["yes", "no"], 0.0),
        ("A", "yes", ["yes", "no"], 0.0),
        ("(A)", "yes", ["yes", "no"], 0.0),
        ("b", "no", ["yes", "no"], 0.0),
        ("Yes.", "yes", ["yes", "no"], 1.0),
        ("The answer is yes", "yes", ["yes", "no"], 1.0),
        ("a", "red", ["red", "blue"], 0.0),
        ("a", "A", ["red", "blue"], 1.0),  # gold is a letter: lettered, a bare letter in either case
        ("(a)", "red cube", ["A. red cube", "B. blue sphere"], 1.0),  # explicit letter prefixes
        ("b) red cube", "B", ["red cube", "blue sphere"], 0.0),  # lower-case prefix is not a letter
        ("Option B", "B", ["red cube", "blue sphere"], 1.0),
        # number words without options
        ("twenty-one", "21", None, 1.0),
        ("Forty two cubes", "42", None, 1.0),
        ("21 cubes", "twenty-one", None, 1.0),
    ],
)
def test_matcher(pred, gold, choices, expected):
    assert match_answer(pred, gold, choices) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>B</answer>", "B"),  # one block, no grammar: lenient extraction
        ("reasoning <answer> B </answer>", "B"),
        ("<answer>A</answer><answer>B</answer>", None),  # hedging: no answer
        ("<answer>B</answer> on second thought <answer>A</answer>", None),
        ("<answer></answer><answer>B</answer>", None),
        ("<answer>A<answer>B</answer>", None),
        ("<answer>B", None),
        ("<answer> </answer>", None),
        ("no tags", None),
    ],
)
def test_extract_answer_several_blocks_is_no_answer(text, expected):
    assert extract_answer(text) == expected
    gold = "B" if expected is None else expected
    batch = make_batch([text], answers=[gold])
    assert accuracy_reward(batch, RewardState(), RewardConfig()).rewards.tolist() == [float(expected is not None)]


def test_hedging_scores_below_committing():
    """Whatever the gold, two answers score 0; one correct answer scores 1."""
    for gold in ("A", "B"):
        hedge = make_batch(["<answer>A</answer><answer>B</answer>"], answers=[gold], choices=[["red", "blue"]])
        assert accuracy_reward(hedge, RewardState(), RewardConfig()).rewards.tolist() == [0.0]
    one = make_batch(["<answer>B</answer>"], answers=["B"], choices=[["red", "blue"]])
    assert accuracy_reward(one, RewardState(), RewardConfig()).rewards.tolist() == [1.0]


def test_normalize_text():
    assert normalize_text("  The Red-Cube, an object!  ") == "red cube object"


def test_accuracy_progress_with_seeded_state():
    texts = [trace([([[0, 0, 1, 1]], [0.5])], a) for a in ("B", "A", "B", "B")]
    batch = make_batch(texts, prompt_ids=["p", "p", "q", "q"], group_size=2)
    state = RewardState({"p": 0.25, "q": 1.0})
    res = accuracy_reward(batch, state, RewardConfig())
    # p: s=1 >= 0.25 -> 1 + 0.75; s=0 < 0.25 -> 0.  q: s=1 >= 1 -> 1 + 0.
    np.testing.assert_allclose(res.rewards, [1.75, 0.0, 1.0, 1.0])
    assert res.state.prev_accuracy == {"p": 0.5, "q": 1.0}
    assert state.prev_accuracy == {"p": 0.25, "q": 1.0}  # not mutated
    assert RewardState.from_json(res.state.to_json()) == res.state
    # Unseen prompt: plain s.
    fresh = accuracy_reward(batch, RewardState(), RewardConfig())
    np.testing.assert_allclose(fresh.rewards, [1, 0, 1, 1])


def test_accuracy_lenient_vs_strict_extraction():
    text = BAD["missing_think_close"]  # answer tags fine, grammar broken
    batch = make_batch([text])
    assert accuracy_reward(batch, RewardState(), RewardConfig()).rewards[0] == 1.0
    strict = RewardConfig(accuracy_requires_format=True)
    assert accuracy_reward(batch, RewardState(), strict).rewards[0] == 0.0


def test_pluggable_judge():
    calls = []

    def judge(pred, answer, choices):
        calls.append((pred, answer, choices))
        return 0.5

    res = accuracy_reward(make_batch([VALID, "garbage"]), RewardState(), RewardConfig(judge=judge))
    np.testing.assert_allclose(res.rewards, [0.5, 0.0])
    assert calls == [("B", "B", None)]  # no answer -> judge not called


def test_combined_weights_and_metrics():
    depth = np.full((10, 10), 0.5, np.float32)
    depth[2:6, 1:4] = 0.3
    batch = make_batch([VALID, "garbage"], boxes=[np.array([[0.1, 0.2, 0.4, 0.6]])] * 2, depth_maps=[depth] * 2)
    res = combined_reward(batch, RewardState(), RewardConfig())
    # VALID: format 1, accuracy 1, iou: final box exact (1) + progress 0 (P_s is the final area), depth 1/1.
    parts = res.parts
    assert parts["format"][0] == 1 and parts["accuracy"][0] == 1 and parts["depth"][0] == 1
    assert parts["iou"][0] == pytest.approx(1.0)
    expected = sum(parts[k] * w for k, w in RewardConfig().weights.items())
    np.testing.assert_allclose(res.rewards, expected, rtol=1e-6)
    for key in ("format_mean", "accuracy_mean", "iou_mean", "depth_mean", "region_attention_mean",
                "sayo_format_mean", "tas_mean", "accuracy_s_mean", "total_mean"):
        assert key in res.metrics
    assert res.state.prev_accuracy == {"p0": 0.5}
    only_format = combined_reward(batch, RewardState(), RewardConfig(weights={"format": 2.0}))
    np.testing.assert_allclose(only_format.rewards, [2.0, 0.0])
    with pytest.raises(ValueError):
        combined_reward(batch, RewardState(), RewardConfig(weights={"nope": 1.0}))


def test_group_mean_is_exact_for_equal_values():
    from sif_jax.rl.rewards import group_mean

    for v in (0.35, 0.1, 1 / 3, 0.7):
        assert group_mean(np.full(8, np.float32(v))) == float(np.float32(v))
    assert group_mean(np.array([0.0, 1.0, 1.0, 0.0])) == 0.5


def test_accuracy_state_of_an_equal_group_is_exact_and_progress_zero():
    """A judge giving 0.35 to all 8 samples: the stored group mean is float32(0.35) exactly, and the
    same scores next time get progress exactly 0 (s - s_prev = 0), not a rounding residue."""
    texts = [VALID] * 8
    config = RewardConfig(judge=lambda p, a, c: 0.35)
    first = accuracy_reward(make_batch(texts, group_size=8), RewardState(), config)
    assert first.state.prev_accuracy["p0"] == float(np.float32(0.35))
    second = accuracy_reward(make_batch(texts, group_size=8), first.state, config)
    np.testing.assert_array_equal(second.rewards, np.full(8, np.float32(0.35)))


def test_evaluation_scores_with_the_reward_matcher():
    """sif_jax.evaluation reports and scores answers with the very functions the reward uses."""
    from sif_jax import evaluation
    from sif_jax.rl import rewards

    assert evaluation.extract_answer is rewards.extract_answer
    assert evaluation.accuracy_scores is rewards.accuracy_scores
