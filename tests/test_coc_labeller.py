import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
from coc_fixtures import CAMERA, CLIP_KINDS, synthetic_clip

from alpamayo_jax.coc import outputs
from alpamayo_jax.coc.labeller import LabelRequest
from alpamayo_jax.coc.openai_backend import OpenAIConfig, OpenAILabeller
from alpamayo_jax.coc.oracle_backend import OracleLabeller
from alpamayo_jax.coc.parser import parse_decisions
from alpamayo_jax.coc.pipeline import Egomotion, PipelineConfig, run_labelling
from tools.label_coc import main as label_coc_main


class FakeSource:
    """In-memory ClipSource over synthetic clips; frames are tiny grey images."""

    def __init__(self, clips: dict):
        self.clips = clips

    def list_clips(self):
        return sorted(self.clips)

    def egomotion(self, clip_id):
        t, xy, yaw, v, a = self.clips[clip_id][0]
        return Egomotion(t, xy, yaw, v, a)

    def frames(self, clip_id, t_us):
        return {CAMERA: np.full((len(t_us), 8, 12, 3), 128, np.uint8)}

    def obstacles(self, clip_id):
        return []

    def ground_truth(self, clip_id):
        return self.clips[clip_id][1]


def _source(n_per_kind: int = 4) -> FakeSource:
    clips = {}
    for i, kind in enumerate(sorted(CLIP_KINDS)):
        for j in range(n_per_kind):
            cid = f"{kind}-{j}"
            clips[cid] = synthetic_clip(cid, kind, change_tick=35 + 17 * j + 3 * i)
    return FakeSource(clips)


def _request(**over) -> LabelRequest:
    base = dict(
        clip_id="clip-a",
        keyframe_us=5_000_000,
        frames={CAMERA: np.zeros((4, 6, 8, 3), np.uint8)},
        frame_us=np.array([3_500_000, 4_000_000, 4_500_000, 5_000_000]),
        history_xy=np.zeros((16, 2)),
        history_yaw=np.zeros(16),
        history_speed=np.full(16, 10.0),
        future_xy=np.zeros((60, 2)),
        future_yaw=np.zeros(60),
        future_speed=np.full(60, 10.0),
        meta_longitudinal=("gentle_decelerate",) * 60,
        meta_lateral=("go_straight",) * 60,
        scenario="slow_for_lead",
    )
    return LabelRequest(**{**base, **over})


VALID = {
    "longitudinal": "lead_obstacle_following",
    "lateral": None,
    "components": [
        {
            "category": "critical_object",
            "type": "car",
            "attributes": {"motion": "decelerating", "position": "ahead"},
            "uncertainty": "low",
            "observed": True,
            "supports": ["longitudinal"],
            "object_id": None,
        }
    ],
}


def test_oracle_labels_synthetic_clips_with_ground_truth_decisions(tmp_path):
    source = _source()
    summary = run_labelling(source, OracleLabeller(), tmp_path / "coc.parquet", progress=False)
    lines = outputs.read_clip_lines(outputs.sidecar_paths(tmp_path / "coc.parquet")[0])
    results = [r for line in lines for r in line["results"]]
    agree = []
    for clip_id, r in ((ln["clip_id"], r) for ln in lines for r in ln["results"]):
        event = source.ground_truth(clip_id)["events"][0]
        rec = r["record"]
        agree.append(
            rec is not None
            and (rec["longitudinal"], rec["lateral"]) == (event["longitudinal"], event["lateral"])
        )
    assert len(results) >= len(source.clips)
    assert np.mean(agree) >= 0.95
    assert summary["clips_seen"] == len(source.clips) == summary["clips_with_labels"]
    assert summary["accepted"] == sum(agree)
    assert summary["skipped_by_reason"]["no_scenario"] > 0
    assert {s for s, n in summary["scenario_balance"].items() if n} == set(CLIP_KINDS)
    # The composed traces parse back to the labelled decisions.
    for r in results:
        parsed = parse_decisions(r["record"]["trace"])
        assert (parsed.longitudinal, parsed.lateral) == (r["record"]["longitudinal"], r["record"]["lateral"])


def test_outputs_have_the_public_shape_and_runs_resume(tmp_path):
    out = tmp_path / "coc.parquet"
    source = _source(n_per_kind=2)
    run_labelling(source, OracleLabeller(), out, progress=False)
    df = pd.read_parquet(out)
    assert df.index.name == "clip_id" and list(df.columns) == ["events"]
    first = df.loc["lane_change-0", "events"][0]
    assert set(first) == {"event_start_timestamp", "cot"} and first["cot"].startswith(
        "Change lanes to the left"
    )
    records_path, summary_path = outputs.sidecar_paths(out)
    n_lines = len(records_path.read_text().splitlines())

    class Counting(OracleLabeller):
        calls = 0

        def label(self, request):
            Counting.calls += 1
            return super().label(request)

    # Resuming labels nothing new; a torn last line is cut and its clip labelled again.
    run_labelling(source, Counting(), out, progress=False)
    assert Counting.calls == 0
    text = records_path.read_text()
    records_path.write_text(text[: len(text) - 40])
    summary = run_labelling(source, Counting(), out, progress=False)
    assert Counting.calls == 1
    assert len(records_path.read_text().splitlines()) == n_lines
    assert json.loads(summary_path.read_text()) == summary
    assert not list(tmp_path.glob(".*.tmp"))


def test_scenario_cap_and_unknown_clips(tmp_path):
    source = _source(n_per_kind=3)
    summary = run_labelling(
        source,
        OracleLabeller(),
        tmp_path / "o.parquet",
        config=PipelineConfig(per_scenario=2),
        progress=False,
    )
    assert max(summary["scenario_balance"].values()) == 2
    assert summary["skipped_by_reason"]["scenario_quota"] == len(CLIP_KINDS)
    with pytest.raises(ValueError, match="nope"):
        run_labelling(source, OracleLabeller(), tmp_path / "p.parquet", clips=["nope"], progress=False)


def test_label_coc_tool_runs_with_a_source(tmp_path):
    source = _source(n_per_kind=1)
    out = tmp_path / "tool.parquet"
    argv = [
        "--root",
        str(tmp_path),
        "--out",
        str(out),
        "--backend",
        "oracle",
        "--workers",
        "2",
        "--no-progress",
        "--clips",
        "yield_to_vru-0",
        "curvy_road-0",
    ]
    summary = label_coc_main(argv, open_source=lambda root: source)
    assert summary["clips_seen"] == 2 and summary["accepted"] == 2
    assert sorted(pd.read_parquet(out).index) == ["curvy_road-0", "yield_to_vru-0"]


def test_oracle_rejections_have_reasons():
    oracle = OracleLabeller()
    assert oracle.label(_request()).rejection == "no_ground_truth"
    gt = {"events": [{"t_us": 12_000_000, "longitudinal": "yield", "lateral": None, "causes": []}]}
    assert oracle.label(_request(ground_truth=gt)).rejection == "no_ground_truth_event"
    late = {
        "object_id": "p",
        "category": "critical_object",
        "type": "pedestrian",
        "attributes": {},
        "first_visible_us": 5_200_000,
    }
    gt = {"events": [{"t_us": 5_500_000, "longitudinal": "yield", "lateral": None, "causes": [late]}]}
    result = oracle.label(_request(ground_truth=gt))
    assert result.record is None and result.rejection == "rules" and "UNOBSERVED" in result.detail


def test_request_shapes_are_checked():
    with pytest.raises(ValueError, match="clip-a.*frames"):
        _request(frames={CAMERA: np.zeros((3, 6, 8, 3), np.uint8)})
    with pytest.raises(ValueError, match="meta-actions"):
        _request(meta_lateral=("go_straight",) * 59)
    with pytest.raises(ValueError, match="unknown meta-actions"):
        _request(meta_lateral=("zigzag",) * 60)


# --- OpenAI-compatible backend against a real local HTTP server ----------------------------------


class ChatServer:
    """A chat-completions server on 127.0.0.1 replaying scripted replies and recording requests."""

    def __init__(self):
        self.script: list[tuple[str, object]] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    self.send_error(404)
                    return
                kind, payload = server.script.pop(0)
                if kind == "status":
                    self.send_error(payload)
                    return
                if kind == "sleep":
                    time.sleep(payload)
                    payload = json.dumps(VALID)
                if kind == "envelope":
                    data = payload.encode()
                else:
                    data = json.dumps(
                        {"choices": [{"message": {"role": "assistant", "content": payload}}]}
                    ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = ChatServer()
    yield s
    s.close()


def _labeller(server, **kw) -> OpenAILabeller:
    cfg = OpenAIConfig.from_env(base_url=server.base_url, model="tiny-vlm", api_key="k123", env={}, **kw)
    return OpenAILabeller(cfg)


def test_http_valid_reply_is_accepted_and_request_is_multimodal(server):
    server.script = [("reply", json.dumps(VALID))]
    result = _labeller(server).label(_request())
    assert result.accepted and result.attempts == 1
    assert result.record.trace == "Follow the decelerating car ahead."
    assert result.record.labeller == "openai:tiny-vlm"
    body, headers = server.requests[0], server.headers[0]
    assert body["model"] == "tiny-vlm" and body["response_format"] == {"type": "json_object"}
    assert headers["Authorization"] == "Bearer k123"
    content = body["messages"][1]["content"]
    images = [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
    assert len(images) == 4 and all(u.startswith("data:image/jpeg;base64,") for u in images)
    assert "Future longitudinal meta-actions: 0.0-6.0 s gentle_decelerate" in content[-1]["text"]


def test_http_malformed_then_schema_invalid_then_valid_retries_with_errors(server):
    server.script = [
        ("reply", "Sure! Here is the label: {oops"),
        ("reply", json.dumps({**VALID, "longitudinal": "brake"})),
        ("reply", "```json\n" + json.dumps(VALID) + "\n```"),
    ]
    result = _labeller(server, max_attempts=3).label(_request())
    assert result.accepted and result.attempts == 3
    second, third = server.requests[1]["messages"], server.requests[2]["messages"]
    assert second[-2] == {"role": "assistant", "content": "Sure! Here is the label: {oops"}
    assert "not valid JSON" in second[-1]["content"]
    assert "label.longitudinal: 'brake'" in third[-1]["content"]


def test_http_rule_violations_are_rejected_after_all_attempts(server):
    bad = {**VALID, "lateral": "lane_change_left"}  # no component supports the lateral decision
    server.script = [("reply", json.dumps(bad))] * 2
    result = _labeller(server, max_attempts=2).label(_request())
    assert result.record is None and result.rejection == "rules" and result.attempts == 2
    assert "UNOBSERVED: the lateral decision" in result.detail


def test_http_timeout_error_status_and_bad_envelope(server):
    server.script = [("sleep", 1.0)]
    result = _labeller(server, timeout_s=0.2, max_attempts=1).label(_request())
    assert (result.rejection, result.attempts) == ("timeout", 1)
    server.script = [("status", 503), ("envelope", '{"id": "x"}')]
    result = _labeller(server, max_attempts=2).label(_request())
    assert result.rejection == "bad_response" and result.attempts == 2
    server.script = [("status", 500)]
    assert _labeller(server, max_attempts=1).label(_request()).rejection == "http_error"
    server.script = [("sleep", 0.5), ("reply", json.dumps(VALID))]
    result = _labeller(server, timeout_s=0.2, max_attempts=2).label(_request())
    assert result.accepted and result.attempts == 2


def test_openai_config_from_arguments_and_environment():
    env = {"OPENAI_BASE_URL": "http://h:1/v1/", "OPENAI_MODEL": "m", "OPENAI_API_KEY": "e"}
    cfg = OpenAIConfig.from_env(env=env)
    assert (cfg.base_url, cfg.model, cfg.api_key) == ("http://h:1/v1", "m", "e")
    assert OpenAIConfig.from_env(model="x", api_key="a", env=env).model == "x"
    with pytest.raises(ValueError, match="OPENAI_BASE_URL"):
        OpenAIConfig.from_env(env={"OPENAI_MODEL": "m"})
    with pytest.raises(ValueError, match="OPENAI_MODEL"):
        OpenAIConfig.from_env(env={"OPENAI_BASE_URL": "http://h"})
