"""Unit tests of report.py's arithmetic (run by tests/load.rs, so `cargo test` runs them)."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402


class Medians(unittest.TestCase):
    def test_the_median_round_keeps_its_other_results(self):
        r = {
            "tp-64-fanout-r1": {"frames_per_second": 300.0, "host_frames_per_second": 30.0},
            "tp-64-fanout-r2": {"frames_per_second": 100.0, "host_frames_per_second": 10.0},
            "tp-64-fanout-r3": {"frames_per_second": 200.0, "host_frames_per_second": 20.0},
            "setup-relay": {"pairs": 3},
        }
        m = report.medians(r)
        self.assertEqual(set(m), {"tp-64-fanout"})
        self.assertEqual(m["tp-64-fanout"]["frames_per_second"], 200.0)
        self.assertEqual(m["tp-64-fanout"]["host_frames_per_second"], 20.0)
        self.assertEqual(m["tp-64-fanout"]["rounds"], [100.0, 200.0, 300.0])

    def test_one_round_is_its_own_median(self):
        m = report.medians({"tp-1KiB-relay-r1": {"frames_per_second": 5.0}})
        self.assertEqual(m["tp-1KiB-relay"], {"frames_per_second": 5.0, "rounds": [5.0]})


def getter(r):
    return lambda k, f: r.get(k, {}).get(f)


class RoomsSection(unittest.TestCase):
    def test_rooms_are_given_against_one_guest_of_the_same_run(self):
        r = {
            "tp-64-relay": {"frames_per_second": 2_000_000.0},
            "tp-64-fanout": {"frames_per_second": 3_000_000.0, "host_frames_per_second": 187_500.0,
                             "deliveries_per_host_frame": 16.0, "guests_per_room": 16, "rooms": 16},
            "tp-64-fanin": {"frames_per_second": 1_000_000.0, "guests_per_room": 16, "rooms": 16},
            "tp-64-onecross": {"frames_per_second": 400_000.0},
            "tp-64-fanout-cross": {"frames_per_second": 600_000.0, "guests_per_room": 16},
            "fanout-cross-64-publish": {"publishes_per_host_frame": 0.05},
        }
        text = report.rooms_section(getter(r))
        self.assertIn("| fan-out 64: one host to 16 guests, delivered (16 rooms) | 3,000,000 frames/s | "
                      "2,000,000 frames/s | 1.50 |", text)
        self.assertIn("| fan-out 64: host frames, each to all guests (16 deliveries a frame) | 187,500 frames/s | "
                      "2,000,000 frames/s | 0.09 |", text)
        self.assertIn("| fan-in 64: 16 guests to one host, read by the host (16 rooms) | 1,000,000 frames/s | "
                      "2,000,000 frames/s | 0.50 |", text)
        self.assertIn("| fan-out 64 across three nodes: one host to 16 guests, delivered (one guest: a pair "
                      "across nodes) | 600,000 frames/s | 400,000 frames/s | 1.50 |", text)
        self.assertIn("| fan-out 64 across three nodes: Redis PUBLISH calls per broadcast frame (batched; at most "
                      "one envelope per node with guests) | 0.05 | | |", text)

    def test_a_missing_run_shows_a_dash_not_an_error(self):
        text = report.rooms_section(getter({"tp-1KiB-fanout": {"frames_per_second": 10.0}}))
        self.assertIn("| fan-out 1KiB: one host to - guests, delivered (- rooms) | 10 frames/s | - frames/s | - |",
                      text)
        self.assertIn("| fan-in 64: - guests to one host, read by the host (- rooms) | - frames/s | - frames/s | - |",
                      text)


class GuessSection(unittest.TestCase):
    def test_the_expected_time_follows_the_code_length_in_force(self):
        r = {"guess": {"guessers": 50, "nodes": 3, "wrong_guesses": 2400, "rate_limited": 900,
                       "guesses_per_minute": 1500.0, "honest_pairings": 20, "honest_failures": 0,
                       "honest_p50_ms": 4.0, "honest_max_ms": 12.0, "code_length": 8}}
        text = report.guess_section(getter(r))
        self.assertIn("| guess rate let through (past each address's burst) | 1,500 a minute |", text)
        self.assertIn("| code length in force | 8 characters |", text)
        # 28^8 / 10,000 / 1,500 a minute = 25,187 minutes; 28^6: 32.1 minutes.
        self.assertIn("| expected time to hit any of 10,000 live codes at that rate | 17.5 days |", text)
        self.assertIn("| the same with 6-character codes | 32.1 minutes |", text)

    def test_no_run_shows_dashes(self):
        text = report.guess_section(getter({}))
        self.assertIn("| code length in force | - characters |", text)
        self.assertIn("at that rate | - |", text)


if __name__ == "__main__":
    unittest.main()
