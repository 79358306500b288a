// The tests' bounded wait is the lab's (the benchmarks use it too): one definition.
export { until } from '../../controller/lab/wait.js';
