"""The official client's realtime example (deepaffects 1.4.1 README, "Realtime"), with only its
`host_url` pointed at this service; it prints one JSON line per answer.

    python -m devtools.realtime_example HOST:PORT APIKEY FILE SPEAKERIDS [BUFFER_MS]

The client's generated code predates protobuf 4: run it with PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    host_url, apikey, file_path, speaker_ids = argv[:4]
    buffer_size = int(argv[4]) if len(argv) > 4 else 30000
    from deepaffects.realtime.util import chunk_generator_from_file, get_deepaffects_client

    timeout_seconds = 2000
    client = get_deepaffects_client(host_url=host_url)
    metadata = [
        ("apikey", apikey),
        ("speakerids", speaker_ids),
        ("encoding", "wav"),
        ("samplerate", "16000"),
        ("languagecode", "en-US"),
    ]
    responses = client.IdentifySpeaker(
        chunk_generator_from_file(file_path, buffer_size=buffer_size), timeout_seconds, metadata=metadata
    )
    for response in responses:
        answer = {"id": response.id, "speaker_id": response.speaker_id, "start": response.start}
        answer.update(end=response.end, score=response.identification_score, error=response.Error)
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
