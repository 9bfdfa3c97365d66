"""S3's XML documents, read without a server (gateway/edges/s3/documents.py is pure)."""

from __future__ import annotations

from xml.etree.ElementTree import Element

import pytest

from gateway.edges.s3.documents import (
    Malformed,
    error_fields,
    objects_page,
    parts_page,
    upload_id_of,
    uploads_page,
    xml_root,
)
from gateway.edges.s3.errors import NoSuchUpload, S3ClientError, S3ServerError, classify

NS = ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


def root(text: str) -> Element:
    parsed = xml_root(text.encode())
    assert parsed is not None
    return parsed


def test_a_parts_page_with_and_without_a_namespace() -> None:
    for ns in ("", NS):
        page = parts_page(
            root(
                f"<ListPartsResult{ns}><IsTruncated>true</IsTruncated>"
                '<Part><PartNumber>1</PartNumber><ETag>"abc"</ETag><Size>5242880</Size></Part>'
                '<Part><PartNumber>2</PartNumber><ETag>"def"</ETag><Size>7</Size></Part></ListPartsResult>'
            )
        )
        assert [(p.number, p.etag, p.size) for p in page.items] == [(1, "abc", 5242880), (2, "def", 7)]
        assert page.truncated and page.next_marker == ("2",)  # no NextPartNumberMarker: the last part's number


def test_a_part_without_its_size_is_malformed() -> None:
    with pytest.raises(Malformed, match="PartNumber or Size"):
        parts_page(root("<ListPartsResult><Part><PartNumber>1</PartNumber></Part></ListPartsResult>"))


def test_seaweedfs_uploads_page_has_only_an_upload_id_marker() -> None:
    page = uploads_page(
        root(
            "<ListMultipartUploadsResult><IsTruncated>true</IsTruncated><NextUploadIdMarker>u2</NextUploadIdMarker>"
            "<Upload><Key>k</Key><UploadId>u1</UploadId><Initiated>2024-01-02T03:04:05.000Z</Initiated></Upload>"
            "</ListMultipartUploadsResult>"
        )
    )
    assert page.next_marker == ("", "u2") and page.items[0].upload_id == "u1"
    assert page.items[0].initiated is not None and page.items[0].initiated.year == 2024


def test_objects_page_and_upload_id() -> None:
    page = objects_page(root("<ListBucketResult><Contents><Key>a</Key><Size>3</Size></Contents></ListBucketResult>"))
    assert (page.items[0].key, page.items[0].size, page.truncated) == ("a", 3, False)
    initiated = root("<InitiateMultipartUploadResult><UploadId>x</UploadId></InitiateMultipartUploadResult>")
    assert upload_id_of(initiated) == "x"
    with pytest.raises(Malformed, match="UploadId"):
        upload_id_of(root("<InitiateMultipartUploadResult/>"))


def test_error_documents_and_their_classification() -> None:
    body = f"<Error{NS}><Code>NoSuchKey</Code><Message>gone</Message><RequestId>r1</RequestId></Error>".encode()
    assert error_fields(body) == {"Code": "NoSuchKey", "Message": "gone", "RequestId": "r1"}
    assert error_fields(b"<html>not s3</html>") == {} and error_fields(b"") == {}
    # radosgw answers 404 NoSuchKey for an aborted upload: upload-scoped, that is NoSuchUpload.
    assert type(classify("ListParts", upload_scoped=True, status=404, code="NoSuchKey")) is NoSuchUpload
    assert type(classify("GetObject", upload_scoped=False, status=404, code="NoSuchKey")) is S3ClientError
    retry_me = classify("CompleteMultipartUpload", upload_scoped=True, status=200, code="InternalError")
    assert type(retry_me) is S3ServerError
