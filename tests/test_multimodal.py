"""Image, Audio and File as signature input types: constructors, MIME checks, the size cap, JSON
round trips, saved programs, and the exact OpenAI content parts sent over HTTP by both adapters."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any, Optional

import anyio
import pydantic
import pytest
from hypothesis import given, settings, strategies as st

import asynclm as alm
from asynclm.adapters._base import INCOMPLETE_DEMO_PREFIX
from asynclm.signatures import Example, History, Media, MediaError, MediaTooLargeError, MediaTypeError, Prediction
from asynclm.signatures._media import revive_media, sniff_mime
from asynclm.testing import FakeOpenAIServer, FakeRequest, Fields

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PNG_B64 = base64.b64encode(PNG).decode()
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" + b"\x00" * 32


def make_wav() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 80)
    return buf.getvalue()


WAV = make_wav()
COMPLETED = "and then ending with the marker for `[[ ## completed ## ]]`."


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def lm_for(server: FakeOpenAIServer) -> alm.LM:
    return alm.LM("openai/m", base_url=server.base_url, api_key="k", cache=False)


def user_messages(request: FakeRequest) -> list[Any]:
    return [m for m in request.messages if m["role"] != "system"]


# -- constructors ------------------------------------------------------------------------------------


def test_image_constructors_and_equality(tmp_path: Path) -> None:
    url = alm.Image.from_url("https://example.com/cat.png")
    assert url.url == "https://example.com/cat.png" and url.data is None and url.is_url
    assert alm.Image("https://example.com/cat.png") == url == alm.Image(url="https://example.com/cat.png")
    inline = alm.Image.from_bytes(PNG)
    assert (inline.mime_type, inline.data, inline.url) == ("image/png", PNG, None)
    assert inline.data_uri == f"data:image/png;base64,{PNG_B64}"
    assert alm.Image(inline.data_uri) == inline == alm.Image.from_url(inline.data_uri)
    assert alm.Image(PNG) == inline and hash(alm.Image(PNG)) == hash(inline)
    path = tmp_path / "dot.png"
    path.write_bytes(PNG)
    assert alm.Image.from_file(path) == inline
    assert alm.Image.from_file(str(path), detail="low") == inline.model_copy(update={"detail": "low"})
    assert "iVBOR" not in repr(inline) and repr(inline) == "Image(mime_type='image/png', 70 bytes)"
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        inline.mime_type = "image/gif"  # type: ignore[misc]


def test_image_from_pil() -> None:
    pil = pytest.importorskip("PIL.Image")
    img = pil.new("RGB", (3, 2), (255, 0, 0))
    made = alm.Image.from_pil(img)
    assert made.mime_type == "image/png"
    assert pil.open(io.BytesIO(made.data or b"")).size == (3, 2)
    assert alm.Image.from_pil(img, "jpeg").mime_type == "image/jpeg"
    assert alm.Image(img) == made == alm.Image.from_PIL(img)  # a PIL image validates too; DSPy's name
    with pytest.raises(TypeError, match=r"PIL\.Image\.Image"):
        alm.Image.from_pil(b"not an image")


def test_audio_and_file_constructors(tmp_path: Path) -> None:
    wav = alm.Audio.from_bytes(WAV)
    assert (wav.mime_type, wav.format) == ("audio/wav", "wav")
    mp3 = alm.Audio.from_bytes(MP3, "audio/mp3")  # an alias of audio/mpeg
    assert (mp3.mime_type, mp3.format) == ("audio/mpeg", "mp3")
    (tmp_path / "a.wav").write_bytes(WAV)
    assert alm.Audio.from_file(tmp_path / "a.wav") == wav
    pdf = alm.File.from_bytes(PDF)
    assert (pdf.mime_type, pdf.filename, pdf.name) == ("application/pdf", None, "file.pdf")
    (tmp_path / "report.pdf").write_bytes(PDF)
    from_disk = alm.File.from_file(tmp_path / "report.pdf")
    assert (from_disk.mime_type, from_disk.name) == ("application/pdf", "report.pdf")
    csv = alm.File.from_bytes(b"a,b\n1,2\n", filename="t.csv")
    assert (csv.mime_type, csv.name) == ("text/csv", "t.csv")
    assert alm.File.from_bytes(b"\x00\x01opaque").mime_type == "application/octet-stream"
    assert alm.File.from_bytes(b"plain", "text/plain").mime_type == "text/plain"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
async def test_afrom_file_reads_in_a_worker_thread(tmp_path: Path) -> None:
    """The file is a named pipe that a task on the event loop writes only once the read has
    started: if the read blocked the loop, that task could never run."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    got: list[alm.Image] = []

    async def read() -> None:
        got.append(await alm.Image.afrom_file(fifo))

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        while True:  # open for writing once a reader has the pipe open (ENXIO before that)
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                await anyio.sleep(0.01)
        os.write(fd, PNG)
        os.close(fd)
    assert got == [alm.Image.from_bytes(PNG)]


async def test_afrom_file_for_each_type(tmp_path: Path) -> None:
    (tmp_path / "p.png").write_bytes(PNG)
    (tmp_path / "a.mp3").write_bytes(MP3)
    (tmp_path / "d.pdf").write_bytes(PDF)
    img = await alm.Image.afrom_file(tmp_path / "p.png", detail="high")
    audio = await alm.Audio.afrom_file(tmp_path / "a.mp3")
    doc = await alm.File.afrom_file(tmp_path / "d.pdf")
    assert img == alm.Image.from_bytes(PNG, detail="high")
    assert audio.format == "mp3" and doc.name == "d.pdf"
    with pytest.raises(MediaTooLargeError):
        await alm.Image.afrom_file(tmp_path / "p.png", max_bytes=10)


# -- MIME checks, the size cap, unsupported inputs --------------------------------------------------


def test_sniffing_recognises_the_common_formats() -> None:
    assert sniff_mime(PNG) == "image/png"
    assert sniff_mime(b"\xff\xd8\xff\xe0\x00\x10JFIF") == "image/jpeg"
    assert sniff_mime(b"GIF89a\x01\x00") == "image/gif"
    assert sniff_mime(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_mime(b"\x00\x00\x00\x18ftypheic") == "image/heic"
    assert sniff_mime(WAV) == "audio/wav"
    assert sniff_mime(MP3) == "audio/mpeg" and sniff_mime(b"\xff\xfb\x90\x00") == "audio/mpeg"
    assert sniff_mime(b"fLaC\x00") == "audio/flac"
    assert sniff_mime(PDF) == "application/pdf"
    assert sniff_mime(b"hello") is None


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: alm.Image.from_bytes(PDF), MediaTypeError, "the data is application/pdf, not an image"),
        (lambda: alm.Image.from_bytes(PNG, "image/jpeg"), MediaTypeError, "mime='image/jpeg' was given but the data"),
        (lambda: alm.Image.from_bytes(b"garbage"), MediaTypeError, "could not recognise the image format"),
        (lambda: alm.Image.from_bytes(b"garbage", "image/png"), MediaTypeError, "does not look like image/png"),
        (lambda: alm.Audio.from_bytes(PNG), MediaTypeError, "Audio takes WAV or MP3"),
        (lambda: alm.Audio.from_bytes(b"fLaC\x00\x00"), MediaTypeError, "the data is audio/flac"),
        (lambda: alm.File.from_bytes(PNG, "application/pdf"), MediaTypeError, "the data is image/png"),
        (lambda: alm.Image("cat.png"), MediaError, "use Image.from_file"),
        (lambda: alm.Image.from_url("ftp://host/cat.png"), pydantic.ValidationError, "not an http"),
        (lambda: alm.Audio("https://example.com/a.wav"), MediaError, "sent inline"),
        (lambda: alm.Image(Path("cat.png")), MediaError, "read a local file with Image.from_file"),
        (lambda: alm.Image(3), MediaError, "cannot make an Image from int"),
        (lambda: alm.Image("data:image/png;base64,@@@"), MediaError, "not valid base64"),
        (lambda: alm.Audio.model_validate(alm.Image.from_bytes(PNG)), pydantic.ValidationError, "expected an Audio"),
        (lambda: alm.Image.model_validate({"media": "audio", "data": PNG_B64}), pydantic.ValidationError, "tagged"),
        (lambda: alm.Image.model_validate({"url": "https://a", "data": PNG_B64}), pydantic.ValidationError, "exactly"),
        (lambda: alm.Image.from_pil(object()), TypeError, "PIL"),
    ],
)
def test_bad_media_inputs_give_clear_errors(build: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(".", r"\.")):
        build()


def test_size_cap_default_per_call_and_per_class(tmp_path: Path) -> None:
    assert Media.max_bytes == alm.Image.max_bytes == 20 * 1024 * 1024
    with pytest.raises(MediaTooLargeError, match="70 bytes is over the size cap of 69 bytes per part"):
        alm.Image.from_bytes(PNG, max_bytes=69)
    assert alm.Image.from_bytes(PNG, max_bytes=70).data == PNG
    big = tmp_path / "big.pdf"
    with open(big, "wb") as f:  # a sparse 21 MB file: rejected from its size, before it is read
        f.truncate(21 * 1024 * 1024)
    with pytest.raises(MediaTooLargeError, match="22,020,096 bytes, over the size cap of 20,971,520"):
        alm.File.from_file(big)
    alm.Audio.max_bytes = 16
    try:
        with pytest.raises(MediaTooLargeError):
            alm.Audio.from_bytes(WAV)
        with pytest.raises(pydantic.ValidationError, match="over the size cap"):
            alm.Audio.model_validate({"data": b64(WAV)})  # JSON input is capped too
        assert alm.Image.from_bytes(PNG).data == PNG  # other classes keep their cap
    finally:
        del alm.Audio.max_bytes
    assert alm.Audio.from_bytes(WAV).format == "wav"


# -- JSON round trips ------------------------------------------------------------------------------

_tails = st.binary(max_size=64)
_urls = st.builds(
    lambda host, path: f"https://{host}.example/{path}",
    st.text("abcdefghij", min_size=1, max_size=8),
    st.text("abc/._-0123", max_size=20),
)
images = st.one_of(
    st.builds(alm.Image.from_url, _urls, detail=st.sampled_from([None, "low", "high", "auto"])),
    st.builds(lambda t: alm.Image.from_bytes(PNG + t), _tails),
    st.builds(lambda t: alm.Image.from_bytes(b"\xff\xd8\xff\xe0" + t), _tails),
    st.builds(lambda t: alm.Image.from_bytes(b"<svg/>" + t, "image/svg+xml"), _tails),
)
audios = st.one_of(
    st.builds(lambda t: alm.Audio.from_bytes(WAV + t), _tails),
    st.builds(lambda t: alm.Audio.from_bytes(MP3 + t), _tails),
)
files = st.one_of(
    st.builds(lambda t, n: alm.File.from_bytes(PDF + t, filename=n), _tails, st.none() | st.text(min_size=1)),
    st.builds(lambda t: alm.File.from_bytes(b"x" + t, "text/plain"), _tails),
)
media = st.one_of(images, audios, files)


@settings(max_examples=150, deadline=None)
@given(value=media)
def test_media_round_trips_through_dump_and_json(value: Media) -> None:
    cls = type(value)
    dumped = value.model_dump()
    assert json.loads(json.dumps(dumped)) == dumped  # the python dump is already JSON data
    assert dumped["media"] == cls.kind
    if value.url is not None:
        assert dumped["url"] == value.url and "data" not in dumped  # a URL stays a URL
    else:
        assert dumped["data"] == b64(value.data or b"") and dumped["mime_type"] == value.mime_type
    assert cls.model_validate(dumped) == value
    assert cls.model_validate_json(value.model_dump_json()) == value
    plain = cls(value.data_uri)  # the data URI (or URL) alone: same media, without detail/filename
    assert (plain.url, plain.data, plain.mime_type) == (value.url, value.data, value.mime_type)
    adapter = pydantic.TypeAdapter(list[Optional[cls]])  # type: ignore[valid-type]
    assert adapter.validate_json(adapter.dump_json([value, None])) == [value, None]
    assert revive_media(json.loads(json.dumps({"k": [dumped, {"x": dumped}]}))) == {"k": [value, {"x": value}]}


@settings(max_examples=60, deadline=None)
@given(photo=images, clip=audios, doc=files)
def test_examples_with_media_round_trip_through_json(photo: alm.Image, clip: alm.Audio, doc: alm.File) -> None:
    ex = Example(photo=photo, clips=[clip], doc=doc, answer="a").with_inputs("photo", "clips", "doc")
    back = Example.from_json_dict(json.loads(json.dumps(ex.to_json_dict())))
    assert back == ex and back.input_keys == ex.input_keys
    pred = Prediction(answer="x", photo=photo)
    assert Prediction.from_json_dict(json.loads(json.dumps(pred.to_json_dict()))) == pred


def test_a_lookalike_user_dict_is_not_revived() -> None:
    data = {"media": "image", "url": "https://a", "comment": "extra key"}
    assert revive_media(data) == data


# -- signatures ----------------------------------------------------------------------------------------


def test_string_and_class_signatures_accept_media_types() -> None:
    sig = alm.Signature("photo: Image, photos: list[Image], clip: Optional[Audio], doc: File | None, q -> answer")
    kinds = {n: f.annotation for n, f in sig.input_fields.items()}
    assert kinds["photo"] is alm.Image and kinds["photos"] == list[alm.Image]
    assert kinds["clip"] == Optional[alm.Audio] and kinds["doc"] == Optional[alm.File]
    assert [f["type"] for f in sig.to_dict()["fields"]] == [
        "Image",
        "list[Image]",
        "Optional[Audio]",
        "Optional[File]",
        "str",
        "str",
    ]
    assert alm.Signature.from_dict(json.loads(json.dumps(sig.to_dict()))) == sig  # no custom_types needed

    class Describe(alm.Signature):
        """Describe the picture."""

        photo: alm.Image = alm.InputField()
        extra: list[alm.Image] | None = alm.InputField()
        description: str = alm.OutputField()

    assert Describe.input_fields["photo"].annotation is alm.Image
    assert alm.Signature.from_dict(Describe.to_dict()) == alm.Signature.ensure(Describe)


# -- rendering: placement rules and the text-only path ---------------------------------------------


def test_a_text_only_request_is_unchanged() -> None:
    """Without media every content is a plain string, byte for byte the adapter's text."""
    sig = alm.Signature("photo: Optional[Image], question -> answer")
    messages = alm.ChatAdapter().format(sig, [], {"photo": None, "question": "Why?"})
    assert messages[-1] == {
        "role": "user",
        "content": "[[ ## photo ## ]]\nNone\n\n[[ ## question ## ]]\nWhy?\n\nRespond with the corresponding output "
        "fields, starting with the field `[[ ## answer ## ]]`, " + COMPLETED,
    }
    plain = alm.JSONAdapter().format("question -> answer", [{"question": "a", "answer": "b"}], {"question": "c"})
    assert all(isinstance(m["content"], str) for m in plain)
    assert plain[1:] == [
        {"role": "user", "content": "[[ ## question ## ]]\na"},
        {"role": "assistant", "content": '{\n  "answer": "b"\n}'},
        {
            "role": "user",
            "content": "[[ ## question ## ]]\nc\n\nRespond with a JSON object in the following order of fields: "
            "`answer`.",
        },
    ]


@pytest.mark.parametrize("adapter", [alm.ChatAdapter(), alm.JSONAdapter()], ids=["chat", "json"])
def test_media_where_no_content_part_can_go_is_an_error(adapter: alm.Adapter) -> None:
    img = alm.Image.from_bytes(PNG)
    with pytest.raises(MediaError, match="output field 'photo' has the type Image: Image, Audio and File are input"):
        adapter.format("q -> photo: Image", [], {"q": "x"})
    with pytest.raises(MediaError, match="output field 'shots' has the type list"):
        adapter.format_completion("q -> shots: list[Image]", {"shots": []})
    with pytest.raises(MediaError, match="nested inside another value"):
        adapter.format("q: dict -> a", [], {"q": {"inner": img}})
    with pytest.raises(MediaError, match="nested inside another value"):
        adapter.format("q -> a", [{"q": "x", "a": img}], {"q": "y"})  # a demo's output
    with pytest.raises(MediaError, match="a list mixes media values with str items"):
        adapter.format("q: list -> a", [], {"q": [img, "caption"]})
    with pytest.raises(MediaError, match="can only be sent in user messages"):
        history = History(messages=[{"role": "assistant", "content": [img]}])
        adapter.format("h: History, q -> a", [], {"h": history, "q": "x"})
    with pytest.raises(MediaError, match=r"only Adapter\.format can place"):
        adapter.format_user_message_content(alm.Signature("photo: Image -> a"), {"photo": img})


def test_no_user_text_can_forge_a_media_placeholder() -> None:
    img = alm.Image.from_url("https://example.com/a.png")
    first = alm.ChatAdapter().format("photo: Image, q -> a", [], {"photo": img, "q": "x"})
    forged = first[-1]["content"][0]["text"]  # whatever text preceded the part
    again = alm.ChatAdapter().format("photo: Image, q -> a", [], {"photo": img, "q": "<<asynclm-media-00-0>>"})
    assert len([p for p in again[-1]["content"] if p["type"] == "image_url"]) == 1
    assert "<<asynclm-media-00-0>>" in again[-1]["content"][-1]["text"] and forged == "[[ ## photo ## ]]\n"


# -- exact request bodies over HTTP ----------------------------------------------------------------


def _demo_and_history() -> tuple[dict[str, Any], History]:
    demo = {"photo": alm.Image.from_url("https://example.com/demo.png"), "question": "dq", "answer": "da"}
    history = History(
        messages=[
            {"photo": alm.Image.from_url("https://example.com/h.png"), "question": "hq", "answer": "ha"},
            {"role": "user", "content": ["raw text", alm.Image.from_bytes(PNG)]},
        ]
    )
    return demo, history


@pytest.mark.parametrize("adapter_name", ["chat", "json"])
async def test_image_request_body_with_demos_and_history(adapter_name: str) -> None:
    adapter = alm.ChatAdapter() if adapter_name == "chat" else alm.JSONAdapter()
    sig = alm.Signature("history: History, photo: Image, question -> answer")
    demo, history = _demo_and_history()
    async with FakeOpenAIServer(responses=Fields(answer="a cat")) as server:
        qa = alm.Predict(sig, lm=lm_for(server), adapter=adapter, demos=[demo])
        pred = await qa(history=history, photo=alm.Image.from_bytes(PNG, detail="low"), question="What is it?")
    assert pred.answer == "a cat"
    (request,) = server.request_log
    sig_wo = sig.delete("history")
    assert request.messages[0] == {"role": "system", "content": adapter.format_system_message(sig)}
    demo_answer = adapter.format_assistant_message_content(sig_wo, {"answer": "da"})
    history_answer = adapter.format_assistant_message_content(sig_wo, {"answer": "ha"})
    requirements = adapter.user_message_output_requirements(sig_wo)
    assert user_messages(request) == [
        {
            "role": "user",
            "content": [
                # the demo has no history: DSPy's "incomplete demo" prefix
                {"type": "text", "text": f"{INCOMPLETE_DEMO_PREFIX}\n\n[[ ## photo ## ]]\n"},
                {"type": "image_url", "image_url": {"url": "https://example.com/demo.png"}},
                {"type": "text", "text": "\n\n[[ ## question ## ]]\ndq"},
            ],
        },
        {"role": "assistant", "content": demo_answer},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "[[ ## photo ## ]]\n"},
                {"type": "image_url", "image_url": {"url": "https://example.com/h.png"}},
                {"type": "text", "text": "\n\n[[ ## question ## ]]\nhq"},
            ],
        },
        {"role": "assistant", "content": history_answer},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "raw text"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "[[ ## photo ## ]]\n"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}", "detail": "low"}},
                {"type": "text", "text": f"\n\n[[ ## question ## ]]\nWhat is it?\n\n{requirements}"},
            ],
        },
    ]
    assert request.last_user_media == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}", "detail": "low"}}
    ]
    assert request.last_user_message.endswith(requirements)
    assert ("response_format" in request.json) == (adapter_name == "json")


@pytest.mark.parametrize("adapter_name", ["chat", "json"])
async def test_audio_and_file_request_bodies(adapter_name: str) -> None:
    adapter = alm.ChatAdapter() if adapter_name == "chat" else alm.JSONAdapter()
    sig = alm.Signature("clips: list[Audio], report: File, note: Optional[File] -> summary")
    async with FakeOpenAIServer(responses=Fields(summary="ok")) as server:
        summarize = alm.Predict(sig, lm=lm_for(server), adapter=adapter)
        report = alm.File.from_bytes(PDF, filename="q3.pdf")
        clips = [alm.Audio.from_bytes(WAV), alm.Audio.from_bytes(MP3)]
        assert (await summarize(clips=clips, report=report, note=None)).summary == "ok"
    (request,) = server.request_log
    requirements = adapter.user_message_output_requirements(sig)
    assert request.messages[1:] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "[[ ## clips ## ]]\n"},
                {"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "wav"}},
                {"type": "input_audio", "input_audio": {"data": b64(MP3), "format": "mp3"}},
                {"type": "text", "text": "\n\n[[ ## report ## ]]\n"},
                {
                    "type": "file",
                    "file": {"file_data": f"data:application/pdf;base64,{b64(PDF)}", "filename": "q3.pdf"},
                },
                {"type": "text", "text": f"\n\n[[ ## note ## ]]\nNone\n\n{requirements}"},
            ],
        }
    ]
    assert request.inputs["note"] == "None" and request.inputs["clips"] == ""  # media fields have no text


def test_media_from_sync_code_and_an_optional_field() -> None:
    with FakeOpenAIServer(responses=Fields(answer="yes")) as server:
        qa = alm.Predict("photo: Image | None, question -> answer", lm=lm_for(server))
        assert qa.sync(photo=alm.Image.from_url("https://example.com/a.png"), question="?").answer == "yes"
        assert qa.sync(photo=None, question="?").answer == "yes"
    with_image, without = server.request_log
    assert with_image.last_user_media == [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    assert without.last_user_media == [] and isinstance(without.messages[-1]["content"], str)


# -- saved programs ------------------------------------------------------------------------------------


def test_saved_programs_keep_urls_and_inline_base64(tmp_path: Path) -> None:
    sig = "photo: Image, clip: Optional[Audio], doc: File, question -> answer"
    url_image = alm.Image.from_url("https://example.com/a.png")
    demos = [
        Example(photo=url_image, clip=None, doc=alm.File.from_bytes(PDF, filename="a.pdf"), question="q", answer="a"),
        {
            "photo": alm.Image.from_bytes(PNG),
            "clip": alm.Audio.from_bytes(WAV),
            "doc": alm.File.from_bytes(PDF),
            "question": "q2",
            "answer": "b",
        },
    ]
    program = alm.Predict(sig, demos=demos)
    path = tmp_path / "program.json"
    program.save(path)
    text = path.read_text()
    json.loads(text)  # plain JSON (no pickle)
    assert '"url": "https://example.com/a.png"' in text
    assert f'"data": "{PNG_B64}"' in text and '"mime_type": "image/png"' in text
    assert f'"data": "{b64(WAV)}"' in text and '"filename": "a.pdf"' in text
    loaded = alm.Predict(sig)
    loaded.load(path)
    assert loaded.demos == program.demos
    assert isinstance(loaded.demos[1]["photo"], alm.Image) and isinstance(loaded.demos[1]["clip"], alm.Audio)
    state = program.dump_state()
    assert json.loads(json.dumps(state)) == state  # dump_state is JSON data
    assert alm.Predict(sig).load_state(state).demos == program.demos


def test_import_asynclm_exports_the_media_names() -> None:
    for name in ("Image", "Audio", "File", "MediaError", "MediaTooLargeError", "MediaTypeError"):
        assert name in alm.__all__ and getattr(alm, name) is getattr(alm.signatures, name)
    assert issubclass(MediaTooLargeError, MediaError) and issubclass(MediaError, ValueError)


def test_urls_data_uris_and_saved_dicts_given_to_media_fields_are_validated() -> None:
    sig = alm.Signature("photo: Image, shots: list[Image], clip: Optional[Audio], note: str | Image -> a")
    inputs = {
        "photo": "https://example.com/a.png",
        "shots": [f"data:image/png;base64,{PNG_B64}", {"media": "image", "url": "https://example.com/b.png"}],
        "clip": {"data": b64(WAV)},
        "note": "just text",
    }
    content = alm.ChatAdapter().format(sig, [], inputs)[-1]["content"]
    assert [p for p in content if p["type"] != "text"] == [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}},
        {"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "wav"}},
    ]
    assert "[[ ## note ## ]]\njust text" in content[-1]["text"]
    empty = alm.ChatAdapter().format("shots: list[Image] -> a", [], {"shots": []})
    assert empty[-1]["content"].startswith("[[ ## shots ## ]]\n[]\n\n")
    with pytest.raises(MediaError, match=r"input field 'photo' \(Image\): Image: 'cat\.png' is not an http"):
        alm.ChatAdapter().format(sig, [], {**inputs, "photo": "cat.png"})


def test_history_with_media_inside_a_saved_demo_round_trips() -> None:
    history = History(messages=[{"photo": alm.Image.from_bytes(PNG), "question": "q", "answer": "a"}])
    ex = Example(history=history, question="next", answer="b")
    back = Example.from_json_dict(json.loads(json.dumps(ex.to_json_dict())))
    assert back["history"] == {"messages": [{"photo": alm.Image.from_bytes(PNG), "question": "q", "answer": "a"}]}
    sig = alm.Signature("history: History, photo: Optional[Image], question -> answer")
    messages = alm.ChatAdapter().format(sig, [], {"history": back["history"], "photo": None, "question": "next"})
    assert messages[1]["content"][1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}


def test_model_copy_does_not_keep_the_old_base64() -> None:
    img = alm.Image.from_bytes(PNG)
    assert img.base64 == PNG_B64
    other = img.model_copy(update={"data": PNG + b"tail"})
    assert other.base64 == b64(PNG + b"tail") and img.base64 == PNG_B64


def test_media_types_load_on_first_use() -> None:
    """Programs without media never build the media classes (pydantic models) at import."""
    code = (
        "import sys, asynclm as alm\n"
        "alm.ChatAdapter().format('q -> a', [], {'q': 'x'})\n"
        "alm.Signature('q: list[str] -> a').to_dict()\n"
        "alm.Example.from_json_dict({'fields': {'q': {'media': 'x'}}, 'input_keys': None})\n"
        "assert 'asynclm.signatures._media' not in sys.modules, 'loaded early'\n"
        "assert alm.Signature('p: Image -> a').input_fields['p'].annotation is alm.Image\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(alm.__file__).parent.parent)


DSPY_MARK = "<<CUSTOM-TYPE-START-IDENTIFIER>>{}<<CUSTOM-TYPE-END-IDENTIFIER>>"


def test_values_saved_by_dspy_and_openai_parts_validate() -> None:
    """DSPy 3 saves its media as its custom-type marker around the content parts (as in
    ``program.save``'s demos); asynclm reads those, and bare OpenAI content parts too."""
    url_part = {"type": "image_url", "image_url": {"url": "https://e.com/a.png"}}
    png_part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}", "detail": "low"}}
    wav_part = {"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "wav"}}
    pdf_part = {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{b64(PDF)}", "filename": "r.pdf"}}
    assert alm.Image(DSPY_MARK.format(json.dumps([url_part]))) == alm.Image.from_url("https://e.com/a.png")
    assert alm.Image(DSPY_MARK.format(json.dumps([png_part]))) == alm.Image.from_bytes(PNG, detail="low")
    assert alm.Audio(DSPY_MARK.format(json.dumps([wav_part]))) == alm.Audio.from_bytes(WAV)
    assert alm.File.model_validate(pdf_part) == alm.File.from_bytes(PDF, filename="r.pdf")
    assert alm.Audio.model_validate(wav_part) == alm.Audio.from_bytes(WAV)
    for bad, message in [
        (lambda: alm.Audio.model_validate(url_part), "'image_url' content part is not an Audio"),
        (lambda: alm.Image(DSPY_MARK.format("not json")), "could not read the DSPy value"),
        (lambda: alm.File.model_validate({"type": "file", "file": {"file_id": "f-1"}}), "only files given inline"),
    ]:
        with pytest.raises((MediaError, pydantic.ValidationError), match=message):
            bad()
    assert content_part_of(alm.Image.model_validate(png_part)) == png_part
    assert content_part_of(alm.Audio.model_validate(wav_part)) == wav_part
    assert content_part_of(alm.File.model_validate(pdf_part)) == pdf_part


def content_part_of(media: Media) -> dict[str, Any]:
    from asynclm.adapters._media import content_part

    return content_part(media)


def test_a_program_saved_by_dspy_with_image_demos_loads(tmp_path: Path) -> None:
    """The file DSPy 3.0.4 writes for ``Predict('photo: dspy.Image, q -> a')`` with one demo."""
    saved = {
        "traces": [],
        "train": [],
        "demos": [
            {
                "photo": DSPY_MARK.format(
                    json.dumps([{"type": "image_url", "image_url": {"url": "https://e.com/a.png"}}])
                ),
                "q": "x",
                "a": "y",
            }
        ],
        "signature": {
            "instructions": "Given the fields `photo`, `q`, produce the fields `a`.",
            "fields": [
                {"prefix": "Photo:", "description": "${photo}"},
                {"prefix": "Q:", "description": "${q}"},
                {"prefix": "A:", "description": "${a}"},
            ],
        },
        "lm": None,
        "metadata": {"dependency_versions": {"python": "3.11", "dspy": "3.0.4", "cloudpickle": "3.1"}},
    }
    path = tmp_path / "dspy.json"
    path.write_text(json.dumps(saved))
    program = alm.Predict("photo: Image, q -> a")
    program.load(path)
    messages = alm.ChatAdapter().format(program.signature, program.demos, {"photo": "https://e.com/b.png", "q": "z"})
    assert messages[1]["content"][1] == {"type": "image_url", "image_url": {"url": "https://e.com/a.png"}}
    assert messages[3]["content"][1] == {"type": "image_url", "image_url": {"url": "https://e.com/b.png"}}


def test_scripted_lm_reads_the_text_inputs_of_a_multi_part_request() -> None:
    """ScriptedLM's request.inputs reads the text parts around a media part, as FakeRequest's does."""
    from asynclm.testing import ScriptedLM

    lm = ScriptedLM(lambda request: {"answer": request.inputs["question"].upper()})
    predict = alm.Predict("photo: Image, question -> answer", lm=lm)
    pred = predict.sync(photo=alm.Image.from_url("https://example.com/a.png"), question="what is it?")
    assert pred.answer == "WHAT IS IT?"
