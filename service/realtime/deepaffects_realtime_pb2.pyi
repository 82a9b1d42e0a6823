from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SegmentChunk(_message.Message):
    __slots__ = ("id", "content", "encoding", "languageCode", "sampleRate", "speakerIds", "segmentOffset", "duration", "Error")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    LANGUAGECODE_FIELD_NUMBER: _ClassVar[int]
    SAMPLERATE_FIELD_NUMBER: _ClassVar[int]
    SPEAKERIDS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTOFFSET_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    content: str
    encoding: str
    languageCode: str
    sampleRate: int
    speakerIds: _containers.RepeatedScalarFieldContainer[str]
    segmentOffset: float
    duration: float
    Error: str
    def __init__(self, id: _Optional[int] = ..., content: _Optional[str] = ..., encoding: _Optional[str] = ..., languageCode: _Optional[str] = ..., sampleRate: _Optional[int] = ..., speakerIds: _Optional[_Iterable[str]] = ..., segmentOffset: _Optional[float] = ..., duration: _Optional[float] = ..., Error: _Optional[str] = ...) -> None: ...

class SegmentSpeaker(_message.Message):
    __slots__ = ("id", "speaker_id", "start", "end", "Error", "identification_score")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    IDENTIFICATION_SCORE_FIELD_NUMBER: _ClassVar[int]
    id: int
    speaker_id: str
    start: float
    end: float
    Error: str
    identification_score: float
    def __init__(self, id: _Optional[int] = ..., speaker_id: _Optional[str] = ..., start: _Optional[float] = ..., end: _Optional[float] = ..., Error: _Optional[str] = ..., identification_score: _Optional[float] = ...) -> None: ...

class SegmentEmotion(_message.Message):
    __slots__ = ("id", "start", "end", "emotion", "Error", "emotion_score")
    ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    EMOTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EMOTION_SCORE_FIELD_NUMBER: _ClassVar[int]
    id: int
    start: float
    end: float
    emotion: str
    Error: str
    emotion_score: float
    def __init__(self, id: _Optional[int] = ..., start: _Optional[float] = ..., end: _Optional[float] = ..., emotion: _Optional[str] = ..., Error: _Optional[str] = ..., emotion_score: _Optional[float] = ...) -> None: ...

class SegmentDiarizeEmotion(_message.Message):
    __slots__ = ("id", "start", "end", "emotion", "speaker_id", "Error", "emotion_score", "identification_score")
    ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    EMOTION_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EMOTION_SCORE_FIELD_NUMBER: _ClassVar[int]
    IDENTIFICATION_SCORE_FIELD_NUMBER: _ClassVar[int]
    id: int
    start: float
    end: float
    emotion: str
    speaker_id: str
    Error: str
    emotion_score: float
    identification_score: float
    def __init__(self, id: _Optional[int] = ..., start: _Optional[float] = ..., end: _Optional[float] = ..., emotion: _Optional[str] = ..., speaker_id: _Optional[str] = ..., Error: _Optional[str] = ..., emotion_score: _Optional[float] = ..., identification_score: _Optional[float] = ...) -> None: ...
