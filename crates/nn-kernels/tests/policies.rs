//! The same convolutions under every kernel policy, in one process: each fast path
//! against candle's own operations (`KernelPolicy::candle()`).

use candle_core::{Device, Tensor};
use nn_kernels::{
    add_owned, bias_act_owned, conv2d_bias_act, depthwise_conv2d_bias_act, Epilogue, KernelPolicy,
    Winograd,
};
use test_support::{max_abs, max_abs_diff};

/// Every combination a binary can ask for.
fn policies() -> Vec<KernelPolicy> {
    let mut all = vec![KernelPolicy::candle()];
    for winograd in [Winograd::Off, Winograd::F2, Winograd::F4] {
        for gemm64 in [false, true] {
            all.push(KernelPolicy {
                fast_conv: true,
                winograd,
                gemm64,
            });
        }
    }
    all
}

/// The tolerance of a policy on a convolution, relative to the pre-activation scale:
/// F(4x4, 3x3) costs about a decimal digit against the direct sum.
fn tolerance(p: KernelPolicy) -> f32 {
    if p.fast_conv && p.winograd == Winograd::F4 {
        5e-5
    } else {
        1e-5
    }
}

#[test]
fn dense_convolutions_agree_under_every_policy() {
    let dev = Device::Cpu;
    // (batch, c_in, h, w, c_out, k, stride, padding): Winograd-sized 3x3 layers (F4 at
    // 13x13 and up, F2 below), 64-channel blocks for gemm_64 with a remainder, a 1x1,
    // a stride-2 3x3.
    let cases = [
        (2, 32, 26, 26, 70, 3, 1, 1),
        (1, 64, 13, 13, 128, 3, 1, 1),
        (1, 24, 12, 30, 16, 3, 1, 1),
        (2, 48, 20, 20, 96, 1, 1, 0),
        (1, 16, 31, 29, 33, 3, 2, 1),
    ];
    for (b, cin, h, w, cout, k, s, p) in cases {
        let x = Tensor::randn(0f32, 1., (b, cin, h, w), &dev).unwrap();
        let wt = Tensor::randn(0f32, 0.2, (cout, cin, k, k), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., cout, &dev).unwrap();
        let scale_of = |act| {
            let y = conv2d_bias_act(&x, &wt, Some(&bias), s, p, act, KernelPolicy::candle());
            y.unwrap()
        };
        let scale = max_abs(&scale_of(Epilogue::Identity));
        for act in [Epilogue::Identity, Epilogue::Relu6, Epilogue::Leaky(0.1)] {
            let want = scale_of(act);
            for policy in policies() {
                let got = conv2d_bias_act(&x, &wt, Some(&bias), s, p, act, policy).unwrap();
                assert_eq!(got.dims(), want.dims());
                let d = max_abs_diff(&got, &want) / scale;
                assert!(
                    d < tolerance(policy),
                    "{b}x{cin}x{h}x{w} -> {cout} k{k} s{s} {act:?} {policy:?}: {d}"
                );
            }
        }
    }
}

#[test]
fn each_winograd_choice_takes_its_own_path() {
    // The policies are not ignored: F2, F4 and the direct path round differently.
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (1, 32, 26, 26), &dev).unwrap();
    let wt = Tensor::randn(0f32, 0.2, (64, 32, 3, 3), &dev).unwrap();
    let run = |winograd| {
        let policy = KernelPolicy {
            winograd,
            ..KernelPolicy::default()
        };
        conv2d_bias_act(&x, &wt, None, 1, 1, Epilogue::Identity, policy).unwrap()
    };
    let (off, f2, f4) = (run(Winograd::Off), run(Winograd::F2), run(Winograd::F4));
    assert!(max_abs_diff(&off, &f2) > 0.0);
    assert!(max_abs_diff(&f2, &f4) > 0.0);
    assert!(max_abs_diff(&off, &f4) > 0.0);
}

#[test]
fn depthwise_and_elementwise_agree_under_every_policy() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (2, 12, 17, 15), &dev).unwrap();
    let wt = Tensor::randn(0f32, 0.3, (12, 1, 3, 3), &dev).unwrap();
    let bias = Tensor::randn(0f32, 1., 12, &dev).unwrap();
    for stride in [1, 2] {
        let want = depthwise_conv2d_bias_act(
            &x,
            &wt,
            Some(&bias),
            stride,
            1,
            Epilogue::Relu6,
            KernelPolicy::candle(),
        )
        .unwrap();
        for policy in policies() {
            let got =
                depthwise_conv2d_bias_act(&x, &wt, Some(&bias), stride, 1, Epilogue::Relu6, policy)
                    .unwrap();
            assert!(
                max_abs_diff(&got, &want) < 1e-5,
                "stride {stride} {policy:?}"
            );
        }
    }
    let want = bias_act_owned(
        x.copy().unwrap(),
        Some(&bias),
        Epilogue::Leaky(0.1),
        KernelPolicy::candle(),
    )
    .unwrap();
    let sum_want = add_owned(x.copy().unwrap(), &want, KernelPolicy::candle()).unwrap();
    for policy in policies() {
        let got =
            bias_act_owned(x.copy().unwrap(), Some(&bias), Epilogue::Leaky(0.1), policy).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-6, "{policy:?}");
        let sum = add_owned(x.copy().unwrap(), &want, policy).unwrap();
        assert!(max_abs_diff(&sum, &sum_want) < 1e-6, "{policy:?}");
    }
    // Both kinds of model in one process: the input is left as it was.
    let again = bias_act_owned(
        x.copy().unwrap(),
        Some(&bias),
        Epilogue::Leaky(0.1),
        KernelPolicy::candle(),
    )
    .unwrap();
    assert_eq!(max_abs_diff(&again, &want), 0.0);
}
