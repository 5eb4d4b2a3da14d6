//! The web page at `GET /`: one HTML file with its script and styles inline, built into
//! the binary, fetching nothing from elsewhere. Pick, drop or paste an image; the page
//! posts it to `/v1/detect` once, draws the boxes, and re-filters them by the confidence
//! slider without uploading again.

/// The page.
pub const INDEX_HTML: &str = include_str!("index.html");

#[cfg(test)]
mod tests {
    use super::INDEX_HTML;

    #[test]
    fn the_page_fetches_nothing_from_elsewhere() {
        for external in ["http://", "https://", "//cdn", "<link "] {
            assert!(!INDEX_HTML.contains(external), "{external}");
        }
        assert!(INDEX_HTML.contains("/v1/detect"));
    }
}
