//! libtorch links and runs: the first thing to fail on a machine whose venv or
//! LIBTORCH setup is broken, with a message that says so.

use tch::{Device, Kind, Tensor};

#[test]
fn a_matmul_runs_on_cpu() {
    let a = Tensor::arange(6, (Kind::Float, Device::Cpu)).reshape([2, 3]);
    let b = Tensor::ones([3, 2], (Kind::Float, Device::Cpu));
    let c = a.matmul(&b);
    // Rows of a are [0,1,2] and [3,4,5]; times a ones matrix each row sums.
    assert_eq!(
        Vec::<f32>::try_from(c.flatten(0, -1)).unwrap(),
        vec![3.0, 3.0, 12.0, 12.0]
    );
}

#[test]
fn autograd_computes_a_gradient() {
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
    let y = (&x * &x).sum(Kind::Float);
    y.backward();
    assert_eq!(Vec::<f32>::try_from(x.grad()).unwrap(), vec![2.0, 4.0, 6.0]);
}
