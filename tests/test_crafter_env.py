"""CrafterEnv and SkilledPlayer against real crafter worlds, most of them laid out by hand."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

pytest.importorskip("crafter")

from crafter import objects  # noqa: E402

from feedlearn.envs.crafter_env import (  # noqa: E402
    ACHIEVEMENTS,
    ACTIONS,
    ITEMS,
    OBJECT_NAMES,
    SEMANTIC_IDS,
    CrafterEnv,
    crafter_score,
    local_view,
    make_vec_env,
    success_rates,
    text_state,
    world_seed,
)
from feedlearn.envs.crafter_player import SCRIPTED, SKILLED, SkilledPlayer  # noqa: E402
from feedlearn.errors import ConfigError  # noqa: E402

DO, NOOP = ACTIONS.index("do"), ACTIONS.index("noop")


def blank(material: str = "sand", area=(16, 16), **kwargs) -> CrafterEnv:
    """A reset env whose whole world is `material` with no object but the player (sand: nothing spawns)."""
    env = CrafterEnv(area=area, observation="symbolic", **kwargs)
    env.reset()
    world = env.crafter._world
    for obj in world.objects:
        if obj is not env.crafter._player:
            world.remove(obj)
    for x in range(area[0]):
        for y in range(area[1]):
            world[x, y] = material
    return env


def put(env: CrafterEnv, offset, material: str) -> tuple[int, int]:
    """Set the cell at the player's position + offset to `material`; returns the cell."""
    pos = tuple(int(v) for v in env.crafter._player.pos + np.array(offset))
    env.crafter._world[pos] = material
    return pos


def current_info(env: CrafterEnv) -> dict:
    """An info dict of the world as it is now (after a hand set-up)."""
    player = env.crafter._player
    return {
        "semantic": env.crafter._sem_view(),
        "player_pos": np.array(player.pos),
        "inventory": dict(player.inventory),
        "achievements": dict(player.achievements),
        "facing": tuple(player.facing),
        "sleeping": player.sleeping,
    }


def play(env: CrafterEnv, player: SkilledPlayer, subgoals: list[str], steps: int, until) -> list[dict]:
    """Let `player` act on `subgoals` until `until(info)` or `steps` steps; the infos seen."""
    info, infos = current_info(env), []
    for _ in range(steps):
        info = env.step(player.act(info, subgoals))[4]
        infos.append(info)
        if until(info):
            break
    return infos


def test_tables_match_the_installed_crafter():
    env = CrafterEnv(area=(12, 12))
    ids = {name: i for name, i in env.crafter._world._mat_ids.items() if name is not None}
    ids |= {cls.__name__.lower(): i for cls, i in env.crafter._sem_view._obj_ids.items()}
    assert ids.pop("player") == 13
    assert {i: name for name, i in ids.items()} == OBJECT_NAMES
    assert SEMANTIC_IDS == max(ids.values()) + 1 == 19
    assert (len(ACTIONS), len(ACHIEVEMENTS), len(ITEMS)) == (17, 22, 16)
    assert ACTIONS[5] == "do" and ITEMS[:4] == ["health", "food", "drink", "energy"]


def test_text_state_lists_what_is_in_the_window_and_the_inventory():
    env = blank("grass")
    put(env, (2, 0), "tree")
    put(env, (-3, 1), "water")
    put(env, (5, 0), "stone")  # x just outside the 9-wide window
    put(env, (0, 4), "stone")  # y just outside the 7-high window
    world, player = env.crafter._world, env.crafter._player
    world.add(objects.Cow(world, player.pos + np.array((0, -2))))
    player.inventory.update(drink=5, wood=2, sapling=1)
    state = text_state(current_info(env), past_action="do")
    assert state.sees == ["water", "grass", "tree", "cow"]
    assert state.status == ["9 health", "9 food", "5 drink", "9 energy", "1 sapling", "2 wood"]
    assert state.past_action == "do"
    assert text_state(current_info(env), None).past_action is None


def test_local_view_is_centred_and_padded_at_the_edge():
    semantic = np.arange(1, 10 * 12 + 1).reshape(10, 12)
    window = local_view(semantic, (0, 0))
    assert window.shape == (9, 7)
    assert (window[4:, 3:] == semantic[:5, :4]).all()
    assert (window[:4] == 0).all() and (window[:, :3] == 0).all()
    assert (local_view(semantic, (5, 6)) == semantic[1:10, 3:10]).all()
    env = blank("grass")
    env.crafter._world.move(env.crafter._player, (1, 15))
    window = local_view(env.crafter._sem_view(), (1, 15))
    assert window.shape == (9, 7) and window[4, 3] == 13
    assert (window[:3] == 0).all() and (window[:, 4:] == 0).all() and (window[3:, :4] != 0).all()


def test_chopping_a_tree_unlocks_collect_wood_once():
    env = blank()
    put(env, env.crafter._player.facing, "tree")
    _, reward, terminated, truncated, info = env.step(DO)
    assert info["unlocked"] == ["collect_wood"] and info["inventory"]["wood"] == 1
    assert info["action"] == "do" and info["faced"] == "tree" and reward == 1.0
    assert not terminated and not truncated
    put(env, env.crafter._player.facing, "tree")
    info = env.step(DO)[4]
    assert info["unlocked"] == [] and info["inventory"]["wood"] == 2
    assert info["achievements"]["collect_wood"] == 2


def test_reset_info():
    env = CrafterEnv(area=(12, 12), observation="symbolic")
    _, info = env.reset()
    assert (info["action"], info["faced"], info["unlocked"], info["sleeping"]) == (None, None, [], False)
    assert info["facing"] == (0, 1) and tuple(info["player_pos"]) == (6, 6)
    assert info["semantic"].shape == (12, 12) and info["inventory"]["health"] == 9


def test_success_rates_and_score():
    episodes = [{"collect_wood", "place_table"}, ["collect_wood"], set(), ("collect_wood", "eat_cow")]
    rates = success_rates(episodes)
    assert list(rates) == ACHIEVEMENTS
    assert rates["collect_wood"] == 75.0 and rates["place_table"] == 25.0 and rates["eat_cow"] == 25.0
    assert sum(rates.values()) == 125.0
    with pytest.raises(ValueError, match="no episodes"):
        success_rates([])
    expected = math.exp((math.log(101) + math.log(51)) / 22) - 1
    assert crafter_score({"collect_wood": 100.0, "place_table": 50.0}) == pytest.approx(expected)
    assert crafter_score({}) == 0.0
    assert crafter_score(dict.fromkeys(ACHIEVEMENTS, 100.0)) == pytest.approx(100.0)


def test_walking_into_lava_terminates():
    env = blank()
    put(env, (1, 0), "lava")
    _, _, terminated, truncated, info = env.step(ACTIONS.index("move_right"))
    assert terminated and not truncated and info["inventory"]["health"] == 0


def test_the_length_limit_truncates():
    env = blank(length=5)
    ends = [env.step(NOOP)[2:4] for _ in range(5)]
    assert ends == [(False, False)] * 4 + [(False, True)]


def test_same_seed_same_worlds_and_a_new_world_each_episode():
    a, b, c = (CrafterEnv(area=(32, 32), observation="symbolic", seed=s) for s in (11, 11, 12))
    first = a.reset()[1]["semantic"]
    assert (b.reset()[1]["semantic"] == first).all()
    assert (c.reset()[1]["semantic"] != first).any()
    actions = np.random.default_rng(0).integers(len(ACTIONS), size=20)
    for action in actions:
        ia, ib = a.step(action)[4], b.step(action)[4]
    assert (ia["semantic"] == ib["semantic"]).all() and ia["inventory"] == ib["inventory"]
    second = a.reset()[1]["semantic"]
    assert (second != first).any()
    c.crafter.play(world_seed(11, 1))  # episode 1 of seed 11 is the world its formula names
    assert (c.crafter._sem_view() == second).all()
    assert (a.reset(seed=11)[1]["semantic"] == first).all()


def test_a_pickled_env_continues_as_the_original():
    env = CrafterEnv(area=(16, 16), observation="symbolic", seed=3)
    env.reset()
    actions = np.random.default_rng(1).integers(len(ACTIONS), size=70)
    for action in actions[:10]:
        env.step(action)
    clone = pickle.loads(pickle.dumps(env))
    for action in actions[10:]:
        one, two = env.step(action), clone.step(action)
        assert (one[0] == two[0]).all() and one[1:4] == two[1:4]
        assert (one[4]["semantic"] == two[4]["semantic"]).all() and one[4]["inventory"] == two[4]["inventory"]


def test_image_and_symbolic_modes_play_the_same_world_at_night():
    image, symbolic = (CrafterEnv(area=(16, 16), observation=o, seed=4) for o in ("image", "symbolic"))
    obs, _ = image.reset()
    symbolic.reset()
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and image.observation_space.contains(obs)
    image.crafter._step = symbolic.crafter._step = 190  # night: rendering draws noise from the world's RNG
    for action in np.random.default_rng(2).integers(len(ACTIONS), size=40):
        one, two = image.step(action)[4], symbolic.step(action)[4]
    assert image.crafter._world.daylight < 0.5
    assert (one["semantic"] == two["semantic"]).all() and one["inventory"] == two["inventory"]


def test_symbolic_observation():
    env = blank("grass")
    env.crafter._player.inventory["wood"] = 3
    obs = env.step(NOOP)[0]
    assert obs.shape == (9 * 7 * 19 + 16,) and obs.dtype == np.float32 and env.observation_space.contains(obs)
    onehot = obs[: 9 * 7 * 19].reshape(9, 7, 19)
    assert onehot.sum() == 63 and (onehot.sum(-1) == 1).all()
    assert onehot[4, 3, 13] == 1 and onehot[0, 0, 2] == 1
    assert obs[9 * 7 * 19 + ITEMS.index("wood")] == pytest.approx(3 / 9)
    assert obs[9 * 7 * 19] == pytest.approx(1.0)  # health 9


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="observation"):
        CrafterEnv(observation="pixels")
    with pytest.raises(ConfigError, match="seeds"):
        make_vec_env([])


def test_vec_env_batches_and_auto_resets():
    vec = make_vec_env([1, 2], area=(12, 12), observation="symbolic", length=3)
    assert vec.reset().shape == (2, 9 * 7 * 19 + 16)
    for step in range(3):
        obs, rewards, dones, infos = vec.step(np.array([NOOP, NOOP]))
        assert obs.shape == (2, 9 * 7 * 19 + 16) and rewards.shape == (2,)
        assert list(dones) == [step == 2] * 2
    assert all(info["episode"]["l"] == 3 and "terminal_observation" in info for info in infos)
    assert [env.unwrapped._episode for env in vec.envs] == [2, 2]  # playing each seed's second world


def test_player_chops_a_tree_three_cells_away():
    env = blank()
    put(env, (3, 1), "tree")
    infos = play(env, SkilledPlayer(), ["chop tree"], 150, lambda i: i["inventory"]["wood"] > 0)
    assert infos[-1]["inventory"]["wood"] == 1 and len(infos) < 20


def test_player_drinks_water_and_then_moves_on():
    env = blank()
    put(env, (-2, 2), "water")
    put(env, (2, -2), "tree")
    env.crafter._player.inventory["drink"] = 3
    player = SkilledPlayer(seed=1)
    infos = play(env, player, ["drink water", "chop tree"], 150, lambda i: i["inventory"]["drink"] > 3)
    assert infos[-1]["inventory"]["drink"] == 4
    player.act(infos[-1], ["drink water", "chop tree"])
    assert player.subgoal == "chop tree"
    player.act(infos[-1], ["sleep", "chop tree"])  # a new instruction starts at its first sub-goal
    assert player.subgoal == "sleep"


def test_player_chops_wood_then_places_a_table():
    env = blank()
    for offset in [(2, 0), (-2, 1), (0, 3)]:
        put(env, offset, "tree")
    infos = play(
        env, SkilledPlayer(), ["place crafting table"], 150, lambda i: i["achievements"]["place_table"]
    )
    assert infos[-1]["unlocked"] == ["place_table"] and (infos[-1]["semantic"] == 11).sum() == 1


def test_player_places_a_table_with_wood_in_hand():
    env = blank()
    env.crafter._player.inventory["wood"] = 9
    infos = play(
        env, SkilledPlayer(), ["place crafting table"], 20, lambda i: i["achievements"]["place_table"]
    )
    assert infos[-1]["unlocked"] == ["place_table"] and len(infos) == 1


def test_player_sleeps_until_it_wakes():
    env = blank()
    env.crafter._player.inventory["energy"] = 7
    infos = play(env, SkilledPlayer(), ["sleep"], 150, lambda i: i["achievements"]["wake_up"])
    assert infos[0]["sleeping"] and infos[-1]["achievements"]["wake_up"] == 1 and not infos[-1]["sleeping"]


def test_unskilled_subgoals_are_random_for_patience_steps():
    env = blank("grass")
    info = current_info(env)
    player = SkilledPlayer(patience=30)
    actions = [player.act(info, ["mine diamond", "chop tree"]) for _ in range(30)]
    assert len(set(actions)) >= 6 and player.subgoal == "mine diamond"
    player.act(info, ["mine diamond", "chop tree"])
    assert player.subgoal == "chop tree"
    same = SkilledPlayer(patience=30)
    assert [same.act(info, ["mine diamond"]) for _ in range(30)] == actions
    assert [SkilledPlayer(seed=1).act(info, ["mine diamond"]) for _ in range(30)] != actions


def test_player_is_deterministic_and_picklable():
    env = CrafterEnv(area=(32, 32), observation="symbolic", seed=8)
    info = env.reset()[1]
    player = SkilledPlayer(seed=5)
    goals = ["mine stone", "chop tree", "attack cow"]
    infos, actions = [], []
    for step in range(60):
        if step == 30:
            clone = pickle.loads(pickle.dumps(player))
        actions.append(player.act(info, goals if step < 45 else []))
        infos.append(info)
        info = env.step(actions[-1])[4]
    replay = SkilledPlayer(seed=5)
    assert [replay.act(i, goals if s < 45 else []) for s, i in enumerate(infos)] == actions
    assert [clone.act(i, goals if s < 45 else []) for s, i in enumerate(infos[30:], 30)] == actions[30:]


def test_player_skills_are_checked():
    assert set(SKILLED) <= SCRIPTED
    with pytest.raises(ConfigError, match="'mine diamond'"):
        SkilledPlayer(skills=("chop tree", "mine diamond"))
    SkilledPlayer(skills=("attack cow", "chop grass"))
