// The Node.js host of nst bundles as a library (stylize.mjs is its command line).
export { HostError } from './errors.mjs';
export { readManifest, openBundle, computeTargets, makeObjective, weightFeeds, pixelBox } from './bundle.mjs';
export { readImage, preprocess, deprocess, resizeBilinear, resizedSize, writePng, writeAtomic } from './image.mjs';
export { calibrate, calibratedWeights, followingStyleSize, resizedShape, sizeFactor } from './calibration.mjs';
export { lbfgs } from './lbfgs.mjs';
export { checkReference, gradChecksums } from './reference.mjs';
export { stylize, logCsv } from './stylize.mjs';
