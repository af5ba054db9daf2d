"""JobQueue against a plain list: any sequence of operations gives the same order and positions."""

from hypothesis import given
from hypothesis import strategies as st

from api_server.store.model import Job
from api_server.store.queue import JobQueue

operations = st.lists(
    st.tuples(st.sampled_from(["push", "pop", "remove", "front", "look"]), st.integers(0, 30)),
    max_size=120,
)


@given(operations)
def test_order_and_positions_match_a_list(ops):
    queue, expected, made = JobQueue(), [], 0
    for op, n in ops:
        if op == "push":
            made += 1
            job = Job(id=f"j{made}", endpoint="e", owner="", inputs_json=b"{}", inputs_bytes=2)
            queue.push(job)
            expected.append(job)
        elif op == "pop" and expected:
            assert queue.pop_first() is expected.pop(0)
        elif op == "remove" and expected:
            job = expected.pop(n % len(expected))
            assert queue.remove(job.id) is job
            assert queue.remove(job.id) is None
        elif op == "front" and expected:
            job = expected.pop(n % len(expected))
            expected.insert(0, job)
            queue.push_front(job)
        # Positions asked between changes (the index is built, then shifted or rebuilt).
        for place, job in enumerate(expected):
            assert queue.position(job.id) == place
        assert len(queue) == len(expected)
        assert queue.first() is (expected[0] if expected else None)
    assert queue.position("never-queued") is None
