//! Integration tests of yolo-weights (no network: a loopback server plays the Hub).

mod weights;
