//! Reading a `POST /v1/detect` request: the query's thresholds, the body within its
//! limit, and the image bytes in it (the raw body, or the `image` parts of a multipart
//! form). Each refusal is an [`ApiError`] that says what was wrong.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;

/// Per-request detection settings (the query's `conf` and `nms_iou`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Keep boxes scoring at least this.
    pub conf: f32,
    /// NMS IoU.
    pub nms_iou: f64,
}

/// The query of `POST /v1/detect`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DetectQuery {
    /// Score threshold in [0, 1] (default: the server's `--conf`).
    #[param(minimum = 0.0, maximum = 1.0)]
    pub conf: Option<f64>,
    /// NMS IoU in [0, 1] (default: the server's `--nms-iou`).
    #[param(minimum = 0.0, maximum = 1.0)]
    pub nms_iou: Option<f64>,
}

/// The thresholds of a request: the query's, else `defaults`.
pub fn thresholds(query: Option<&str>, defaults: Thresholds) -> Result<Thresholds, ApiError> {
    let q: DetectQuery = serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| {
        ApiError::bad_request(format!(
            "bad query: {e} (expected conf and nms_iou, numbers in [0, 1])"
        ))
    })?;
    let check = |name: &str, v: Option<f64>| -> Result<Option<f64>, ApiError> {
        match v {
            Some(x) if !(0.0..=1.0).contains(&x) => Err(ApiError::bad_request(format!(
                "bad query: {name}={x} is not in [0, 1]"
            ))),
            _ => Ok(v),
        }
    };
    Ok(Thresholds {
        conf: check("conf", q.conf)?.map_or(defaults.conf, |c| c as f32),
        nms_iou: check("nms_iou", q.nms_iou)?.unwrap_or(defaults.nms_iou),
    })
}

/// The whole body, refused with 413 past `limit` bytes (from `Content-Length` before
/// reading anything, else once the limit is crossed).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the limit of {limit} bytes (--max-body)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over {
            too_large()
        } else {
            ApiError::bad_request(format!("cannot read the body: {e}"))
        }
    })
}

/// The images of the request: the body itself for `image/*`,
/// `application/octet-stream` or no content type; the parts named `image` of a
/// `multipart/form-data` body. At most `max_images`.
pub async fn image_bytes(
    headers: &HeaderMap,
    body: Bytes,
    max_images: usize,
) -> Result<Vec<Bytes>, ApiError> {
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("the Content-Type header is not text"))?,
        ),
    };
    let essence = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let images = if essence == "multipart/form-data" {
        let boundary = multer::parse_boundary(content_type.unwrap_or_default()).map_err(|e| {
            ApiError::bad_request(format!("bad multipart/form-data Content-Type: {e}"))
        })?;
        multipart_images(body, &boundary, max_images).await?
    } else if essence.is_empty()
        || essence.starts_with("image/")
        || essence == "application/octet-stream"
    {
        vec![body]
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unsupported Content-Type `{essence}`: send the image bytes (image/*, application/octet-stream) or multipart/form-data with parts named `image`"
            ),
        ));
    };
    if images.is_empty() {
        return Err(ApiError::bad_request(
            "no image: the multipart form has no part named `image`",
        ));
    }
    if let Some(i) = images.iter().position(|b| b.is_empty()) {
        return Err(ApiError::bad_request(if images.len() == 1 {
            "empty body: send the bytes of an image".to_string()
        } else {
            format!("image {} of {} is empty", i + 1, images.len())
        }));
    }
    Ok(images)
}

async fn multipart_images(
    body: Bytes,
    boundary: &str,
    max_images: usize,
) -> Result<Vec<Bytes>, ApiError> {
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut images = Vec::new();
    loop {
        let field = form
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request(format!("bad multipart body: {e}")))?;
        let Some(field) = field else { break };
        match field.name() {
            Some("image") => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "unexpected multipart part `{other}`: send images as parts named `image`"
                )))
            }
            None => {
                return Err(ApiError::bad_request(
                    "a multipart part has no name: send images as parts named `image`",
                ))
            }
        }
        if images.len() == max_images {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("more than {max_images} images in one request (--max-images)"),
            ));
        }
        let bytes = field
            .bytes()
            .await
            .map_err(|e| ApiError::bad_request(format!("bad multipart body: {e}")))?;
        images.push(bytes);
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const DEFAULTS: Thresholds = Thresholds {
        conf: 0.5,
        nms_iou: 0.3,
    };

    #[test]
    fn query_values_are_checked() {
        assert_eq!(thresholds(None, DEFAULTS).unwrap(), DEFAULTS);
        let t = thresholds(Some("conf=0.25&nms_iou=0.5"), DEFAULTS).unwrap();
        assert_eq!((t.conf, t.nms_iou), (0.25, 0.5));
        for bad in [
            "conf=2",
            "conf=abc",
            "nms_iou=-0.1",
            "confidence=0.3",
            "conf=NaN",
        ] {
            let e = thresholds(Some(bad), DEFAULTS).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.message.starts_with("bad query"), "{bad}: {}", e.message);
        }
    }

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn content_types_choose_raw_or_multipart() {
        let raw = Bytes::from_static(b"\x89PNG...");
        for ct in ["image/png", "application/octet-stream", "IMAGE/JPEG; q=1"] {
            let got = image_bytes(&headers(ct), raw.clone(), 4).await.unwrap();
            assert_eq!(got, vec![raw.clone()], "{ct}");
        }
        let got = image_bytes(&HeaderMap::new(), raw.clone(), 4)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        let e = image_bytes(&headers("application/json"), raw.clone(), 4)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let e = image_bytes(&headers("image/png"), Bytes::new(), 4)
            .await
            .unwrap_err();
        assert!(e.message.contains("empty body"), "{}", e.message);

        let form = "--XX\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nAAA\r\n--XX\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nBB\r\n--XX--\r\n";
        let got = image_bytes(
            &headers("multipart/form-data; boundary=XX"),
            Bytes::from(form),
            4,
        )
        .await
        .unwrap();
        assert_eq!(got, vec![Bytes::from("AAA"), Bytes::from("BB")]);
        let e = image_bytes(
            &headers("multipart/form-data; boundary=XX"),
            Bytes::from(form),
            1,
        )
        .await
        .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let other = form.replace("name=\"image\"; filename", "name=\"file\"; filename");
        let e = image_bytes(
            &headers("multipart/form-data; boundary=XX"),
            Bytes::from(other),
            4,
        )
        .await
        .unwrap_err();
        assert!(e.message.contains("`file`"), "{}", e.message);
        let e = image_bytes(&headers("multipart/form-data"), Bytes::from(form), 4)
            .await
            .unwrap_err();
        assert!(e.message.contains("multipart"), "{}", e.message);
    }
}
