mod bad_input;
mod common;
mod darknet;
mod download;
mod maps;
mod output_files;
mod pth;
