"""Plan success rate, planning time and joint travel for 25 views on the default rig geometry,
and the time the simulated arm (fast mode) takes to check and run the whole plan.

    .venv/bin/python benchmarks/bench_robot_plan.py [--seeds 3] [--views 25]
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from robot.config import load_rig_config  # noqa: E402
from robot.planning import plan_viewpoints  # noqa: E402
from robot.sim import SimulatedArm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--views", type=int, default=25)
    args = ap.parse_args()
    rig = load_rig_config()
    plan_viewpoints(rig, 2)  # load the model once (not timed)
    print(f"rig: {rig.model}, base {rig.base_pose_world}, radius {rig.views.radius} m, elevation "
          f"{rig.views.elevation_min_deg}-{rig.views.elevation_max_deg} deg, azimuth spread {rig.views.azimuth_spread_deg} deg")
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        plan = plan_viewpoints(rig, args.views, seed=seed)
        t_plan = time.perf_counter() - t0
        st = plan.stats
        t0 = time.perf_counter()
        motion = 0.0
        with SimulatedArm(rig, fast=True) as arm:
            for q in plan.ordered_joint_positions:
                motion += arm.move_to(q).duration
            motion += arm.home().duration
        t_run = time.perf_counter() - t0
        saved = st["joint_travel_unordered_rad"] - st["joint_travel_ordered_rad"]
        print(f"seed {seed}: {len(plan)}/{args.views} views, success rate {st['success_rate']:.0%} "
              f"({st['survived']}/{st['candidates_tried']} candidates, {st['rounds']} rounds), drops {plan.drop_counts()}, "
              f"plan {t_plan:.2f} s | joint travel {st['joint_travel_unordered_rad']:.1f} -> "
              f"{st['joint_travel_ordered_only_rad']:.1f} (ordered) -> {st['joint_travel_ordered_rad']:.1f} rad "
              f"(+ branch-consistent IK), saved {saved:.1f} rad ({saved / st['joint_travel_unordered_rad']:.0%}) | "
              f"via home {st['transits_via_home']} | sim run {t_run:.2f} s wall for {motion:.1f} s of motion")


if __name__ == "__main__":
    main()
